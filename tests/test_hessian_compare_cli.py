"""analysis.hessian_compare: the command line (usage line, --epochs help, the printed table in
full), a run of a shipped config (only ``last.pt``), and :func:`checkpoint_hessian` (the
single-checkpoint function notebook 04 calls) against :func:`run` on the same checkpoint.

The run is tiny (1 epoch of 1 step, 8-16-16 CNN, monitoring on 64 images): the bookkeeping is
tested, not the learning.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import digits_runs, hessian_compare
from tests.test_digits_runs import TINY  # the same tiny digits runs


@pytest.fixture(scope="module")
def last_only_run(tmp_path_factory):
    """A run of the shipped digits EMI config (``train.checkpoint_every_epochs: 0``): ``last.pt``
    and ``metrics.jsonl``, no ``epoch_XXXX.pt``."""
    from trainers.config import load_config
    from trainers.pretrain import train

    run_dir = tmp_path_factory.mktemp("shipped") / "digits_emi"
    cfg = load_config(
        digits_runs.CONFIG_DIR / "digits_emi.yaml",
        [*TINY, "train.epochs=1", "eval.every_epochs=1", "train.device=cpu",
         f"train.run_dir={run_dir}"],
    )  # fmt: skip
    assert cfg.train.checkpoint_every_epochs == 0  # what the shipped config does
    with digits_runs.torch_threads(1):
        train(cfg)
    assert (run_dir / "last.pt").is_file() and not list(run_dir.glob("epoch_*.pt"))
    return run_dir


def _mean_loss(run_dir, epoch):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["mean_loss"] for r in records if r["kind"] == "epoch" and r["epoch"] == epoch)


def test_usage_line_and_epochs_default(capsys):
    with pytest.raises(SystemExit) as exc:
        hessian_compare.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m analysis.hessian_compare ")
    text = " ".join(out.split())
    assert "see doc" not in text
    marks = ", ".join(map(str, hessian_compare.FULL_EPOCH_MARKS))
    assert "with --runs, every checkpoint of each folder" in text
    assert f"first and last epoch with --quick, else epochs {marks} and the last" in text


def test_table_printed_in_full(tmp_path, monkeypatch, capsys):
    """More rows than pandas shows (display.max_rows 60): every row is printed, no '...'."""
    n = 80
    df = pd.DataFrame(
        {
            "objective": [f"run{i:02d}" for i in range(n)],
            "epoch": range(1, n + 1),
            "train_loss": [1.0 / (i + 1) for i in range(n)],
            "probe_top1": [50.0 + i / 10 for i in range(n)],
            "top1": [1e3 + i for i in range(n)],
            "min_eigenvalue": [-1e-3 * i for i in range(n)],
            "trace": [123456.789 + i for i in range(n)],
        }
    )
    monkeypatch.setattr(hessian_compare, "run", lambda *args, **kwargs: df)
    assert hessian_compare.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "..." not in out and "rows x" not in out
    lines = out.strip().splitlines()
    assert len(lines) == n + 1  # header and every row
    assert all(f"run{i:02d}" in out for i in range(n))
    assert lines[0].split() == list(df.columns)


def test_run_folder_with_only_last_pt(last_only_run, tmp_path, capsys):
    """README's ``--runs name=RUN_DIR`` on a shipped-config run: last.pt is used, said in one
    line on stderr; its epoch and the trainer's loss of that epoch are in the table."""
    out = tmp_path / "out"
    code = hessian_compare.main(["--quick", "--out", str(out), "--runs", f"emi={last_only_run}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notes = [line for line in captured.err.splitlines() if "last.pt" in line]
    assert notes == [
        f"{last_only_run}: no epoch_*.pt checkpoints; using {last_only_run / 'last.pt'} (epoch 1)"
    ]
    summary = pd.read_csv(out / f"{hessian_compare.NAME}.csv")
    assert list(summary["objective"]) == ["emi"] and list(summary["epoch"]) == [1]
    assert summary["train_loss"].iloc[0] == pytest.approx(_mean_loss(last_only_run, 1))
    # an epoch other than last.pt's is still an error naming what is there
    code = hessian_compare.main(
        ["--quick", "--out", str(out), "--runs", f"emi={last_only_run}", "--epochs", "3"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: emi: no checkpoint for epoch(s) [3]")
    assert "(available: [1])" in err[-1]


def test_empty_folder_names_both_checkpoint_kinds(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = hessian_compare.main(["--quick", "--out", str(tmp_path), "--runs", f"x={empty}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: {empty}: no epoch_*.pt or last.pt checkpoints in this folder"]


def test_checkpoint_hessian_matches_run(last_only_run, tmp_path):
    """The notebook's single-checkpoint summary (a run folder: its newest checkpoint, here
    last.pt) equals :func:`run`'s row for that checkpoint: same views, loss and Lanczos/Hutch++
    settings."""
    result = hessian_compare.checkpoint_hessian(last_only_run, quick=True)
    assert result["checkpoint"] == str(last_only_run / "last.pt") and result["epoch"] == 1
    row = hessian_compare.run(quick=True, out=tmp_path, runs={"emi": last_only_run}).iloc[0]
    assert result["loss"] == pytest.approx(row["loss_at_views"], rel=1e-6)
    assert result["top_eigenvalues"][0] == pytest.approx(row["top1"], rel=1e-6)
    assert result["min_eigenvalue"] == pytest.approx(row["min_eigenvalue"], rel=1e-6, abs=1e-9)
    assert result["trace"] == pytest.approx(row["trace"], rel=1e-6)
    assert len(result["top_eigenvalues"]) == hessian_compare._sizes(True)["k"]
    # a checkpoint file, other settings
    one = hessian_compare.checkpoint_hessian(last_only_run / "last.pt", quick=True, k=1)
    assert len(one["top_eigenvalues"]) == 1 and one["loss"] == pytest.approx(result["loss"])
