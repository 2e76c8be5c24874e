"""TensorBoard output of trainers.pretrain: a tiny digits run with ``train.tensorboard=true``
writes event files into its run folder, and the scalars read back with TensorBoard's own reader
are the rows of ``metrics.jsonl`` (same tags, steps and values to float32 precision); with
``train.tensorboard=false`` no event file is written."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainers.config import load_config
from trainers.pretrain import train

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"

# 2 epochs x 3 steps of 64 images, a small CNN, a step record every step and the online
# monitoring (kNN / linear probe / spectrum) after each epoch on 200 images per split.
TINY = [
    "train.epochs=2",
    "train.max_steps_per_epoch=3",
    "train.log_every_steps=1",
    "train.checkpoint_every_epochs=0",
    "train.deterministic=true",
    "train.progress=false",
    "data.batch_size=64",
    "model.widths=[8,16,16]",
    "model.projector_dims=[16,8]",
    "eval.every_epochs=1",
    "eval.max_samples=200",
]

# what the per-epoch monitoring must put into every epoch record
MONITORING = ["knn_top1", "probe_top1", "feat_effective_rank", "proj_effective_rank",
              "proj_normalized_std"]  # fmt: skip


def _run(run_dir: Path, extra: list[str]) -> Path:
    cfg = load_config(CONFIGS / "digits_emi.yaml", [*TINY, f"train.run_dir={run_dir}", *extra])
    train(cfg)
    return run_dir


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


def _jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _expected_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{"<kind>/<key>": [(step, value), ...]}``: every numeric entry of every metrics.jsonl
    record except its epoch / step counters, at the record's step, in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for k, v in rec.items():
            if k in ("kind", "epoch", "step") or not isinstance(v, (int, float)):
                continue
            out.setdefault(f"{rec['kind']}/{k}", []).append((rec["step"], float(v)))
    return out


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0})  # 0: keep all
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[ea.SCALARS]}


def _f32(x: float) -> float:
    return float(np.float32(x))


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("tb") / "run", ["train.tensorboard=true"])


def test_tensorboard_event_files_in_run_folder(tb_run):
    files = _event_files(tb_run)
    assert files, (
        f"train.tensorboard=true wrote no TensorBoard event file under {tb_run} "
        f"(tensorboard installed: {importlib.util.find_spec('tensorboard') is not None}; "
        f"files there: {sorted(p.name for p in tb_run.rglob('*'))})"
    )
    # all in the run folder's tb/ (one writer, one file for a run that was not resumed)
    assert [p.parent for p in files] == [tb_run / "tb"], files
    assert all(p.stat().st_size > 0 for p in files)


def test_tensorboard_tags_include_loss_and_monitoring(tb_run):
    assert _event_files(tb_run), f"no TensorBoard event file under {tb_run}"
    records = _jsonl(tb_run)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and len([r for r in records if r["kind"] == "step"]) == 6
    for rec in epochs:  # the run did monitor every epoch, so the tags below must exist
        assert set(MONITORING) <= rec.keys(), rec
    tags = set(_tensorboard_scalars(tb_run / "tb"))
    wanted = {"step/loss", "step/lr", "epoch/mean_loss", *(f"epoch/{k}" for k in MONITORING)}
    assert wanted <= tags, f"missing TensorBoard tags {sorted(wanted - tags)}; got {sorted(tags)}"
    # and nothing but the metrics.jsonl numbers
    assert tags == set(_expected_scalars(records))


def test_tensorboard_scalars_equal_metrics_jsonl(tb_run):
    """The independent check: steps and values read back from the event files are the
    metrics.jsonl rows (TensorBoard stores float32)."""
    assert _event_files(tb_run), f"no TensorBoard event file under {tb_run}"
    expected = _expected_scalars(_jsonl(tb_run))
    got = _tensorboard_scalars(tb_run / "tb")
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    for tag, rows in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in rows], f"{tag}: steps differ"
        for (step, want), (_, have) in zip(rows, got[tag], strict=True):
            same = (math.isnan(want) and math.isnan(have)) or have == _f32(want)
            assert same, f"{tag} at step {step}: TensorBoard {have!r}, metrics.jsonl {want!r}"
    assert [s for s, _ in got["step/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in got["epoch/knn_top1"]] == [3, 6]  # epoch records at their last step


def test_tensorboard_false_writes_no_events(tmp_path):
    run_dir = _run(
        tmp_path / "run",
        ["train.tensorboard=false", "train.epochs=1", "train.max_steps_per_epoch=2",
         "eval.every_epochs=0"],
    )  # fmt: skip
    assert not _event_files(run_dir), _event_files(run_dir)
    assert not (run_dir / "tb").exists()
    assert [r["step"] for r in _jsonl(run_dir) if r["kind"] == "step"] == [1, 2]
