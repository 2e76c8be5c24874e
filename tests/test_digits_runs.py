"""analysis.digits_runs: make once, reuse, retrain on other settings, resume partial runs; and the
drivers that read those runs (collapse, hessian_compare) share them.

Runs here are tiny (1 step per epoch, 8-16-16 CNN, monitoring on 64 images) so the bookkeeping is
tested, not the learning; the real quick runs are exercised by
tests/test_diagnose.py::test_real_digits_runs_alignment_flagged_emi_mio_healthy.
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch

from analysis import digits_runs, hessian_compare
from mitools.checkpoint import load_checkpoint

TINY = (
    "train.max_steps_per_epoch=1",
    "train.deterministic=true",
    "train.progress=false",
    "train.tensorboard=false",
    "data.batch_size=32",
    "model.widths=[8, 16, 16]",
    "model.projector_dims=[16, 8]",
    "eval.max_samples=64",
    "eval.probe_steps=5",
    "eval.knn_k=5",
)


@pytest.fixture
def train_calls(monkeypatch):
    """Record every trainer call (resume argument, torch threads inside) and pass it through."""
    import trainers.pretrain as pretrain

    calls = []
    real = pretrain.train

    def spy(cfg, resume=None):
        calls.append(
            {"resume": resume, "threads": torch.get_num_threads(), "epochs": cfg.train.epochs}
        )
        return real(cfg, resume=resume)

    monkeypatch.setattr(pretrain, "train", spy)
    return calls


@pytest.fixture
def caller_threads_2():
    """The caller runs with 2 torch threads (the runs must use 1 inside and give 2 back); the
    worker's own count is restored afterwards."""
    with digits_runs.torch_threads(2):
        yield


def _epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def _weights(path):
    return load_checkpoint(path, map_location="cpu")["model"]


def test_objectives_and_run_dir_naming(tmp_path):
    assert {"emi", "mio", "alignment", "simclr", "vicreg", "barlow_twins"} <= set(
        digits_runs.OBJECTIVES
    )
    for config, _ in digits_runs.OBJECTIVES.values():
        assert (digits_runs.CONFIG_DIR / config).is_file()
    assert digits_runs.run_dir_for("mio", tmp_path, quick=True, seed=3) == (
        tmp_path / "digits_mio_quick_s3"
    )
    assert digits_runs.run_dir_for("emi", tmp_path, quick=False).name == "digits_emi_full_s0"


def test_unknown_objective_lists_known_ones(tmp_path, train_calls):
    with pytest.raises(ValueError, match="unknown objective 'nope'.*emi.*barlow_twins"):
        digits_runs.ensure_run("nope", tmp_path, quick=True)
    # ensure_runs checks every name before training any
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        digits_runs.ensure_runs(["emi", "nope"], tmp_path, quick=True)
    assert train_calls == [] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("objective", ["simclr", "vicreg", "barlow_twins", "alignment"])
def test_baseline_configs_resolve_to_their_loss(tmp_path, objective):
    cfg = digits_runs.resolve_config(objective, tmp_path, quick=True)
    expected = {"alignment": "byol"}.get(objective, objective)
    assert cfg.loss.name == expected
    assert cfg.train.epochs == digits_runs.QUICK_EPOCHS
    assert cfg.train.checkpoint_every_epochs == 1 and cfg.eval.every_epochs == 1
    full = digits_runs.resolve_config(objective, tmp_path, quick=False)
    assert full.train.epochs == digits_runs.FULL_EPOCHS


def test_train_then_reuse_then_retrain_on_other_settings(tmp_path, train_calls, caller_threads_2):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    run_dir = digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=2, overrides=TINY)
    # the trainer's seeding does not leak into the caller's RNG; threads restored, 1 inside
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.get_num_threads() == 2
    assert train_calls == [{"resume": None, "threads": 1, "epochs": 2}]
    assert run_dir == digits_runs.run_dir_for("emi", tmp_path, quick=True)
    for name in ("epoch_0001.pt", "epoch_0002.pt", "last.pt", "config.yaml"):
        assert (run_dir / name).is_file(), name
    records = _epoch_records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("probe_top1" in r and "proj_effective_rank" in r for r in records)
    mtime = (run_dir / "last.pt").stat().st_mtime_ns

    # same settings: reused, nothing trained, nothing rewritten
    assert digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=2, overrides=TINY) == run_dir
    assert len(train_calls) == 1
    assert (run_dir / "last.pt").stat().st_mtime_ns == mtime

    # another setting: retrained from scratch, old records gone
    digits_runs.ensure_run(
        "emi", tmp_path, quick=True, epochs=2, overrides=(*TINY, "optim.lr=0.01")
    )
    assert [c["resume"] for c in train_calls] == [None, None]
    assert (run_dir / "last.pt").stat().st_mtime_ns != mtime
    assert [r["epoch"] for r in _epoch_records(run_dir)] == [1, 2]

    # another number of epochs is another setting too (the cosine schedule depends on it)
    digits_runs.ensure_run(
        "emi", tmp_path, quick=True, epochs=1, overrides=(*TINY, "optim.lr=0.01")
    )
    assert len(train_calls) == 3
    assert [r["epoch"] for r in _epoch_records(run_dir)] == [1]
    assert not (run_dir / "epoch_0002.pt").exists()


def test_missing_epoch_checkpoint_means_retrain(tmp_path, train_calls):
    run_dir = digits_runs.ensure_run("mio", tmp_path, quick=True, epochs=2, overrides=TINY)
    (run_dir / "epoch_0001.pt").unlink()
    digits_runs.ensure_run("mio", tmp_path, quick=True, epochs=2, overrides=TINY)
    assert [c["resume"] for c in train_calls] == [None, None]
    assert (run_dir / "epoch_0001.pt").is_file()


def test_partial_run_is_resumed_to_the_uninterrupted_result(tmp_path, train_calls):
    run_dir = digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=3, overrides=TINY)
    final = _weights(run_dir / "last.pt")
    # The folder as a run stopped after epoch 1 leaves it, plus stale log lines of epochs 2-3
    # (written by a crash after logging but before checkpointing): they must not survive.
    shutil.copy(run_dir / "epoch_0001.pt", run_dir / "last.pt")
    for e in (2, 3):
        (run_dir / f"epoch_{e:04d}.pt").unlink()
    state = digits_runs.run_state(
        run_dir,
        digits_runs.resolve_config("emi", run_dir, quick=True, epochs=3, overrides=TINY),
        "emi",
    )
    assert state == "partial"

    digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=3, overrides=TINY)
    assert [c["resume"] for c in train_calls] == [None, "auto"]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert all((run_dir / f"epoch_{e:04d}.pt").is_file() for e in (1, 2, 3))
    assert [r["epoch"] for r in _epoch_records(run_dir)] == [1, 2, 3]
    # deterministic CPU training: resuming gives the uninterrupted weights exactly
    resumed = _weights(run_dir / "last.pt")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    # and it is complete now
    digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=3, overrides=TINY)
    assert len(train_calls) == 2


# ----------------------------------------------------------------------------- drivers sharing runs


def test_collapse_and_hessian_share_runs(tmp_path, monkeypatch, train_calls):
    """collapse.run then hessian_compare.run into the same results folder: each objective is
    trained once; the Hessian reads the first and last epoch, the loss of the checkpoint's config
    and the trainer's mean training loss."""
    import pandas as pd

    from analysis import collapse, hessian_compare
    from mitools.data import BatchAugment, get_preset
    from mitools.hessian import freeze_views
    from mitools.losses import build_loss

    monkeypatch.setattr(digits_runs, "QUICK_OVERRIDES", TINY)
    monkeypatch.setattr(digits_runs, "QUICK_EPOCHS", 3)
    out = tmp_path / "results"
    per_epoch = collapse.run(quick=True, out=out, objectives=("emi", "mio"))
    assert sorted(per_epoch.groupby("objective")["epoch"].max()) == [3, 3]
    assert len(train_calls) == 2
    summary = hessian_compare.run(quick=True, out=out, objectives=("emi", "mio"))
    assert len(train_calls) == 2  # reused
    assert {o: sorted(g["epoch"]) for o, g in summary.groupby("objective")} == {
        "emi": [1, 3],
        "mio": [1, 3],
    }
    density = pd.read_csv(out / f"{hessian_compare.DENSITY_NAME}.csv")
    assert set(density["objective"]) == {"emi", "mio"}

    run_dir = digits_runs.run_dir_for("mio", out / "runs", quick=True)
    mean_loss = {r["epoch"]: r["mean_loss"] for r in _epoch_records(run_dir)}
    row = summary[(summary.objective == "mio") & (summary.epoch == 3)].iloc[0]
    assert row["train_loss"] == pytest.approx(mean_loss[3])
    # loss_at_views recomputed independently: the checkpoint's model and config, BN eval
    model, state = hessian_compare._load_model(run_dir / "epoch_0003.pt")
    sizes = hessian_compare._sizes(True)
    x1, x2 = freeze_views(
        hessian_compare._digits_images(), sizes["views"], BatchAugment(get_preset("digits")), 0
    )
    loss = build_loss("mio", **state["config"]["loss"]["params"]).eval()
    with torch.no_grad():
        expected = float(loss(model(x1)[1], model(x2)[1]))
    assert row["loss_at_views"] == pytest.approx(expected, rel=1e-5)


def test_hessian_user_runs_and_epoch_choice(tmp_path, train_calls):
    from analysis import hessian_compare

    run_dir = digits_runs.ensure_run(
        "simclr", tmp_path / "runs", quick=True, epochs=2, overrides=TINY
    )
    df = hessian_compare.run(quick=True, out=tmp_path, runs={"mine": run_dir}, epochs=(2,))
    assert list(df["epoch"]) == [2] and list(df["objective"]) == ["mine"]
    with pytest.raises(ValueError, match=r"no checkpoint for epoch\(s\) \[7\]"):
        hessian_compare.run(quick=True, out=tmp_path, runs={"mine": run_dir}, epochs=(7,))
    assert hessian_compare.default_epochs([3, 1, 2], quick=True) == [1, 3]
    marks = hessian_compare.FULL_EPOCH_MARKS
    full = hessian_compare.default_epochs(list(range(1, 31)), quick=False)
    assert full == sorted({e for e in marks if e <= 30} | {30}) and full[0] == 1
    assert hessian_compare.default_epochs([4, 1, 2, 3], quick=False)[-1] == 4


# ----------------------------------------------------------------------------- hessian_compare CLI
# The per-epoch probe / kNN accuracy of the run next to the curvature, run folders or single
# checkpoints, and bad input as one ``error:`` line with exit 2.


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """2 epochs, monitoring at epoch 2 only: epoch 1's accuracies must be NaN."""
    root = tmp_path_factory.mktemp("runs")
    with digits_runs.torch_threads(1):
        return digits_runs.ensure_run(
            "emi", root, quick=True, epochs=2, overrides=(*TINY, "eval.every_epochs=2")
        )


def _cli(args, capsys):
    code = hessian_compare.main(args)
    captured = capsys.readouterr()
    return code, captured.err


def _same(value, expected):
    if expected is None:
        return math.isnan(value)
    return value == pytest.approx(expected)


def test_summary_has_the_runs_probe_and_knn_accuracy(evaluated_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _cli(["--quick", "--out", str(out), "--runs", f"emi={evaluated_run}"], capsys)
    assert code == 0, err
    summary = pd.read_csv(out / f"{hessian_compare.NAME}.csv")
    assert {"train_loss", "probe_top1", "knn_top1"} <= set(summary.columns)
    records = {r["epoch"]: r for r in _epoch_records(evaluated_run)}
    assert sorted(summary["epoch"]) == sorted(records) == [1, 2]
    assert "probe_top1" not in records[1] and "probe_top1" in records[2]
    for _, row in summary.iterrows():
        rec = records[int(row["epoch"])]
        assert _same(row["train_loss"], rec.get("mean_loss"))
        assert _same(row["probe_top1"], rec.get("probe_top1"))
        assert _same(row["knn_top1"], rec.get("knn_top1"))
    assert math.isnan(summary.set_index("epoch").loc[1, "probe_top1"])
    assert not math.isnan(summary.set_index("epoch").loc[2, "probe_top1"])


def test_cli_accepts_one_checkpoint_file(evaluated_run, tmp_path, capsys):
    out = tmp_path / "out"
    ckpt = evaluated_run / "epoch_0002.pt"
    code, err = _cli(["--quick", "--out", str(out), "--runs", f"emi={ckpt}"], capsys)
    assert code == 0, err
    summary = pd.read_csv(out / f"{hessian_compare.NAME}.csv")
    assert list(summary["objective"]) == ["emi"] and list(summary["epoch"]) == [2]
    rec = {r["epoch"]: r for r in _epoch_records(evaluated_run)}[2]
    assert summary["probe_top1"].iloc[0] == pytest.approx(rec["probe_top1"])
    assert summary["train_loss"].iloc[0] == pytest.approx(rec["mean_loss"])
    # a file not named epoch_XXXX.pt: the epoch comes from the checkpoint itself
    ckpts, _ = hessian_compare._run_checkpoints(evaluated_run / "last.pt")
    assert ckpts == {2: evaluated_run / "last.pt"}


def _bad_inputs(evaluated_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    corrupt = corrupt_dir / "epoch_0001.pt"
    corrupt.write_text("not a checkpoint\n")
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    state = torch.load(evaluated_run / "epoch_0001.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    nan_ckpt = nan_dir / "epoch_0001.pt"
    torch.save(state, nan_ckpt)
    return {
        "missing folder": (tmp_path / "nope", tmp_path / "nope"),
        "missing file": (tmp_path / "nope" / "epoch_0003.pt", tmp_path / "nope"),
        "no checkpoints": (empty, empty),
        "corrupt file": (corrupt, corrupt),
        "corrupt in folder": (corrupt_dir, corrupt),
        "nan weights": (nan_ckpt, nan_ckpt),
        "nan weights in folder": (nan_dir, nan_ckpt),
    }


def test_bad_input_is_one_error_line_and_exit_2(evaluated_run, tmp_path, capsys):
    for label, (arg, named) in _bad_inputs(evaluated_run, tmp_path).items():
        out = tmp_path / "out"
        code, err = _cli(["--quick", "--out", str(out), "--runs", f"emi={arg}"], capsys)
        lines = err.strip().splitlines()
        assert code == 2, (label, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (label, err)
        assert str(named) in lines[0], (label, lines[0])
        assert not (out / f"{hessian_compare.NAME}.csv").exists(), label
    code, err = _cli(["--quick", "--out", str(tmp_path), "--runs", str(evaluated_run)], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --runs expects NAME=PATH, got {str(evaluated_run)!r}"
    ]
