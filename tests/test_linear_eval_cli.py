"""The ``python -m trainers.linear_eval`` command line: its default protocol (the standard,
augmented one), the protocol-dependent weight decay recorded in the JSON, and bad input (an
unwritable ``--out``, a corrupt checkpoint, non-positive counts) as a one-line error with exit
status 2 before any evaluation runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mitools.checkpoint import save_checkpoint
from mitools.models import EncoderSpec, SSLModel
from trainers import linear_eval

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A digits checkpoint as the trainer writes it (small CNN at its random init: evaluating it
    costs about a second; no training needed to exercise the command line)."""
    torch.manual_seed(0)
    spec = EncoderSpec(arch="small_cnn", in_channels=1, widths=[8, 16, 16], projector_dims=[16, 8])
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, {
        "model": SSLModel(spec).state_dict(), "epoch": 0, "step": 0,
        "config": {"data": {"name": "digits"}}, "encoder_spec": spec.to_dict(),
    })  # fmt: skip
    return path


@pytest.fixture
def no_evaluation(monkeypatch):
    """Any evaluation fails the test: the checks must come before the work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("evaluate_backbone ran although the input was bad")

    monkeypatch.setattr(linear_eval, "evaluate_backbone", forbidden)


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- default protocol


def test_parser_defaults_to_the_standard_protocol():
    args = linear_eval._build_parser().parse_args(["--checkpoint", "x.pt"])
    assert args.protocol == "augmented" and args.epochs == 100 and args.lr == 0.1
    assert args.weight_decay is None  # the chosen protocol's own default
    assert args.knn_k == 200 and args.knn_temperature == 0.07


def test_bare_cli_runs_augmented_protocol(ckpt, tmp_path):
    out = tmp_path / "probe.json"
    argv = ["--checkpoint", str(ckpt), "--labels-per-class", "10", "--epochs", "1",
            "--knn-k", "20", "--out", str(out)]  # fmt: skip
    assert linear_eval.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "augmented" and res["solver"] == "sgd-augmented"
    assert res["epochs"] == 1 and res["steps"] is None and res["lr"] == 0.1
    assert res["weight_decay"] == 0.0
    assert res["n_train"] == 100 and res["n_eval"] == 359 and res["knn_k"] == 20
    assert 0.0 <= res["linear_top1"] <= 100.0 and 10.0 < res["knn_top1"] <= 100.0


# ----------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize(
    ("extra", "fn", "expected"),
    [
        (["--protocol", "augmented"], "augmented_linear_probe", 0.0),
        (["--protocol", "cached"], "linear_probe", 1e-4),
        (["--protocol", "augmented", "--weight-decay", "0.003"], "augmented_linear_probe", 0.003),
        (["--protocol", "cached", "--weight-decay", "0"], "linear_probe", 0.0),
    ],
    ids=["augmented-default", "cached-default", "augmented-explicit", "cached-explicit"],
)
def test_weight_decay_default_per_protocol(ckpt, tmp_path, monkeypatch, extra, fn, expected):
    seen = {}

    def probe(*args, **kwargs):  # stands in for the probe: records what it was given
        seen.update(kwargs)
        return 50.0

    monkeypatch.setattr(linear_eval, fn, probe)
    out = tmp_path / "probe.json"
    argv = ["--checkpoint", str(ckpt), "--labels-per-class", "5", "--out", str(out), *extra]
    assert linear_eval.main(argv) == 0
    assert seen["weight_decay"] == expected  # the value that reached the probe ...
    res = json.loads(out.read_text())
    assert res["weight_decay"] == expected and res["linear_top1"] == 50.0  # ... and the JSON's
    assert res["protocol"] == extra[1]


def test_help_states_protocol_and_weight_decay_defaults(capsys):
    with pytest.raises(SystemExit):
        linear_eval.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "augmented (default)" in text
    assert "0 augmented, 0.0001 cached" in text


def test_library_default_stays_cached():
    import inspect

    params = inspect.signature(linear_eval.evaluate_backbone).parameters
    assert params["protocol"].default == "cached"
    assert linear_eval.default_weight_decay("cached") == 1e-4
    assert linear_eval.default_weight_decay("augmented") == 0.0


# ----------------------------------------------------------------------------- --out


def _unwritable_outs(tmp_path: Path) -> list[tuple[str, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    outs = [
        (str(a_file / "r.json"), "is not a folder"),
        (str(a_file / "sub" / "r.json"), "is not a folder"),
        (str(tmp_path), "is a directory"),
    ]
    if Path("/proc/self").is_dir():
        outs.append(("/proc/nope/r.json", "cannot create folder /proc/nope"))
    return outs


def test_unwritable_out_fails_before_work(ckpt, tmp_path, capsys, no_evaluation):
    for out, why in _unwritable_outs(tmp_path):
        assert linear_eval.main(["--checkpoint", str(ckpt), "--out", out]) == 2, out
        line = _one_line_error(capsys.readouterr().err)
        assert out in line and why in line, line


def test_unwritable_out_through_python_m(ckpt):
    # the real command: exit status 2 and one line on stderr, in well under the evaluation's time
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.linear_eval", "--checkpoint", str(ckpt),
         "--out", "/proc/nope/r.json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # no results printed: nothing was evaluated
    line = _one_line_error(proc.stderr)
    assert "/proc/nope/r.json" in line


def test_out_folder_is_created_and_json_written_atomically(ckpt, tmp_path, monkeypatch):
    existing = tmp_path / "a" / "probe.json"
    existing.parent.mkdir()
    existing.write_text("old")
    fresh = tmp_path / "new" / "deeper" / "probe.json"  # folders that do not exist yet
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        # the target is untouched until the final rename
        assert not Path(dst).exists() or Path(dst).read_text() == "old"
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for target in (existing, fresh):
        argv = ["--checkpoint", str(ckpt), "--protocol", "cached", "--labels-per-class", "5",
                "--knn-k", "10", "--out", str(target)]  # fmt: skip
        assert linear_eval.main(argv) == 0
        assert json.loads(target.read_text())["protocol"] == "cached"
    assert [dst for _, dst in replaced] == [existing, fresh]
    assert all(src.parent == dst.parent for src, dst in replaced)  # same folder: atomic rename
    for folder in (existing.parent, fresh.parent):  # no temporary files left behind
        assert [f.name for f in folder.iterdir()] == ["probe.json"]


# ----------------------------------------------------------------------------- other bad input


def test_corrupt_checkpoint_is_one_line_error(ckpt, tmp_path, capsys, no_evaluation):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:300])
    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    for bad in (truncated, text, tmp_path / "missing.pt"):
        assert linear_eval.main(["--checkpoint", str(bad)]) == 2
        assert str(bad) in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--labels-per-class", "0"], "--labels-per-class must be >= 1, got 0"),
        (["--labels-per-class", "-3"], "--labels-per-class must be >= 1, got -3"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--protocol", "cached", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
        (["--knn-k", "0"], "--knn-k must be >= 1"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--data", "digitz"], "unknown dataset 'digitz'"),
        (["--data", "cifar10"], "pass --root DIR"),
        (["--device", "foo"], "--device 'foo' is not a torch device"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_work(ckpt, capsys, no_evaluation, extra, msg):
    assert linear_eval.main(["--checkpoint", str(ckpt), *extra]) == 2
    assert msg in _one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_one_line_error(ckpt, capsys, no_evaluation):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert linear_eval.main(["--checkpoint", str(ckpt), "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_line_error(capsys.readouterr().err)
