"""The ``python -m trainers.linear_eval`` command line: its default protocol (the standard,
augmented one), the protocol-dependent weight decay, seed and EMA flag recorded in the JSON, the
JSON's file mode, and bad input (an unwritable ``--out``, a corrupt checkpoint, a folder as
checkpoint, a checkpoint of another architecture or channel count, a missing dataset,
non-positive counts) as a one-line error with exit status 2 before any evaluation runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mitools.data.datasets
from mitools.checkpoint import save_checkpoint
from mitools.models import EncoderSpec, MomentumEncoder, SSLModel
from tests.test_data_datasets import make_cifar10
from trainers import linear_eval

REPO = Path(__file__).resolve().parents[1]


def _small_spec(in_channels: int = 1, widths=(8, 16, 16)) -> EncoderSpec:
    return EncoderSpec(
        arch="small_cnn", in_channels=in_channels, widths=list(widths), projector_dims=[16, 8]
    )


def _save_ckpt(path: Path, spec: EncoderSpec, data: dict, **extra) -> Path:
    """A checkpoint as the trainer writes it, of ``SSLModel(spec)`` at its random init (evaluating
    it costs about a second; no training needed to exercise the command line)."""
    state = {"model": SSLModel(spec).state_dict(), "epoch": 0, "step": 0,
             "config": {"data": data}, "encoder_spec": spec.to_dict()}  # fmt: skip
    state.update(extra)
    return save_checkpoint(path, state)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A digits checkpoint (1-channel small CNN)."""
    torch.manual_seed(0)
    return _save_ckpt(
        tmp_path_factory.mktemp("ckpt") / "last.pt", _small_spec(), {"name": "digits"}
    )


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 in the real on-disk format (10 training, 3 test images)."""
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root)
    return root


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory, cifar_root) -> Path:
    """A 3-channel checkpoint of a run on ``cifar_root``."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("rgb") / "last.pt"
    return _save_ckpt(path, _small_spec(3), {"name": "cifar10", "root": str(cifar_root)})


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
        outs.append(("/proc/nope/r.json", "folder /proc/nope: cannot create the folder"))
        # /proc exists but refuses new files (ENOENT): not "folder /proc is not writable"
        outs.append(("/proc/r.json", "folder /proc: cannot create a file in the folder (it exists"))
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
        (["--device", "foo"], "--device 'foo' is not a torch device"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_work(ckpt, capsys, no_evaluation, extra, msg):
    assert linear_eval.main(["--checkpoint", str(ckpt), *extra]) == 2
    assert msg in _one_line_error(capsys.readouterr().err)


def test_dataset_without_root_is_one_line_error(tmp_path, capsys, no_evaluation):
    path = _save_ckpt(tmp_path / "last.pt", _small_spec(3), {"name": "cifar10"})  # no root stored
    assert linear_eval.main(["--checkpoint", str(path)]) == 2
    assert "pass --root DIR" in _one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_one_line_error(ckpt, capsys, no_evaluation):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert linear_eval.main(["--checkpoint", str(ckpt), "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_line_error(capsys.readouterr().err)


def _fake_result(**kwargs) -> linear_eval.ProbeResult:
    return linear_eval.ProbeResult(50.0, 40.0, 100, 359, 16, None, 20, 0.07, "lbfgs", "cached")


@pytest.mark.parametrize(
    ("which", "extra", "names"),
    [
        ("digits", ["--data", "cifar10"], ("1-channel", "'cifar10' has 3 channels")),
        ("rgb", ["--data", "digits"], ("3-channel", "'digits' has 1 channels")),
    ],
    ids=["1-channel-ckpt-on-cifar10", "3-channel-ckpt-on-digits"],
)
def test_channel_mismatch_is_one_line_error_before_data_work(
    ckpt, rgb_ckpt, cifar_root, capsys, monkeypatch, which, extra, names
):
    # the audit's case: a digits checkpoint on (real-format) CIFAR crashed with a traceback in
    # the first convolution, after both datasets had been read
    opened = []
    real_build = mitools.data.datasets.build_dataset

    def spy(*args, **kwargs):
        opened.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(mitools.data.datasets, "build_dataset", spy)
    path = ckpt if which == "digits" else rgb_ckpt
    argv = ["--checkpoint", str(path), "--root", str(cifar_root), "--protocol", "cached", *extra]
    assert linear_eval.main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert all(n in line for n in names), line
    assert opened == []  # no dataset was opened


def test_matching_channels_on_real_format_cifar_runs(rgb_ckpt, cifar_root, tmp_path):
    # the control of the test above: the same fixture and check accept a 3-channel checkpoint
    out = tmp_path / "r.json"
    argv = ["--checkpoint", str(rgb_ckpt), "--data", "cifar10", "--root", str(cifar_root),
            "--protocol", "cached", "--steps", "5", "--knn-k", "3", "--out", str(out)]  # fmt: skip
    assert linear_eval.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["data"] == "cifar10" and res["n_train"] == 10 and res["n_eval"] == 3


def test_checkpoint_from_another_architecture_is_one_line_error(tmp_path, capsys, no_evaluation):
    spec = _small_spec()
    others = {
        "widths": SSLModel(_small_spec(widths=(4, 8, 8))).state_dict(),  # same keys, other shapes
        "mlp": SSLModel(EncoderSpec(arch="mlp", in_channels=1, input_dim=64, widths=[16],
                                    projector_dims=[8])).state_dict(),  # other keys
    }  # fmt: skip
    for name, weights in others.items():
        path = _save_ckpt(tmp_path / f"{name}.pt", spec, {"name": "digits"}, model=weights)
        assert linear_eval.main(["--checkpoint", str(path)]) == 2, name
        line = _one_line_error(capsys.readouterr().err)
        assert "another architecture" in line, line


def test_directory_as_checkpoint_is_named_and_last_pt_suggested(
    ckpt, tmp_path, capsys, no_evaluation
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (run_dir / "last.pt").write_bytes(ckpt.read_bytes())
    assert linear_eval.main(["--checkpoint", str(run_dir)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"{run_dir} is a directory" in line and f"did you mean {run_dir / 'last.pt'}?" in line
    assert linear_eval.main(["--checkpoint", str(empty)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"{empty} is a directory" in line and "did you mean" not in line


def test_missing_dataset_message_names_what_applies_to_linear_eval(rgb_ckpt, tmp_path, capsys):
    root = tmp_path / "no_cifar_here"
    root.mkdir()
    argv = ["--checkpoint", str(rgb_ckpt), "--root", str(root), "--protocol", "cached"]
    assert linear_eval.main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in line  # the loader's facts stay
    assert "cifar-10-python.tar.gz" in line
    assert "linear_eval does not download" in line and "point --root at" in line
    assert "download=True" not in line  # options linear_eval does not have


def test_json_records_seed_and_ema(tmp_path):
    torch.manual_seed(2)
    spec = _small_spec()
    ema = MomentumEncoder(SSLModel(spec)).state_dict()  # other weights than the online model's
    path = _save_ckpt(tmp_path / "last.pt", spec, {"name": "digits"}, ema=ema)
    common = ["--checkpoint", str(path), "--protocol", "cached", "--labels-per-class", "5",
              "--knn-k", "10", "--steps", "5"]  # fmt: skip
    results = {}
    for name, extra in {"online": [], "ema": ["--ema", "--seed", "3"]}.items():
        out = tmp_path / f"{name}.json"
        assert linear_eval.main([*common, *extra, "--out", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert results["online"]["seed"] == 0 and results["online"]["ema"] is False
    assert results["ema"]["seed"] == 3 and results["ema"]["ema"] is True


def test_out_json_mode_follows_umask(ckpt, tmp_path, monkeypatch):
    # mkstemp's 0600 kept group members of a shared cluster from reading results
    monkeypatch.setattr(linear_eval, "evaluate_backbone", lambda *a, **k: _fake_result())
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
            os.umask(umask)
            out = tmp_path / f"u{umask:o}" / "r.json"
            assert linear_eval.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
            assert out.stat().st_mode & 0o777 == mode, oct(out.stat().st_mode)
            assert [f.name for f in out.parent.iterdir()] == ["r.json"]
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- audit 10


@pytest.mark.parametrize(
    ("extra", "ignored"),
    [
        (["--protocol", "cached", "--epochs", "3", "--lr", "0.5"], "--epochs, --lr ignored"),
        (["--protocol", "cached", "--solver", "sgd", "--epochs=3", "--lr", "0.5"],
         "--epochs ignored"),
        (["--steps", "5", "--solver", "sgd"], "--solver, --steps ignored"),
        (["--protocol", "augmented", "--steps", "5"], "--steps ignored"),
        (["--protocol", "cached", "--steps", "5", "--solver", "sgd", "--lr", "0.5"], None),
        (["--epochs", "3", "--lr", "0.5"], None),
    ],
)  # fmt: skip
def test_flags_the_protocol_does_not_use_are_warned(ckpt, capsys, monkeypatch, extra, ignored):
    monkeypatch.setattr(linear_eval, "evaluate_backbone", lambda *a, **k: _fake_result())
    assert linear_eval.main(["--checkpoint", str(ckpt), "--knn-k", "20", *extra]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "ignored" in ln]
    if ignored is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"warning: {ignored} with --protocol")


def test_knn_k_cap_is_said(ckpt, capsys):
    argv = ["--checkpoint", str(ckpt), "--protocol", "cached", "--steps", "2",
            "--labels-per-class", "5"]  # fmt: skip
    assert linear_eval.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["knn_k"] == 50
    lines = [ln for ln in captured.err.splitlines() if "--knn-k" in ln]
    assert len(lines) == 1 and "k = 50, not --knn-k 200" in lines[0]
    assert "capped at the number of probe training images (50)" in lines[0]


def test_too_many_labels_per_class_names_the_flag(ckpt, capsys):
    argv = ["--checkpoint", str(ckpt), "--protocol", "cached", "--labels-per-class", "1000"]
    assert linear_eval.main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("error: --labels-per-class 1000: class ") and "use at most" in line
    with pytest.raises(linear_eval.LabelsPerClassError, match="labels_per_class=1000"):
        linear_eval.evaluate_backbone(torch.nn.Identity(), "digits", labels_per_class=1000)


def test_plain_state_dict_points_to_diagnose(tmp_path, capsys, no_evaluation):
    path = tmp_path / "sd.pt"
    torch.save(SSLModel(_small_spec()).state_dict(), path)
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": SSLModel(_small_spec()).state_dict(), "epoch": 1}, wrapped)
    for bad in (path, wrapped):
        assert linear_eval.main(["--checkpoint", str(bad)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert str(bad) in line and "a plain state dict" in line
        assert f"python -m mitools.diagnose {bad} --arch" in line
    other = tmp_path / "other.pt"
    torch.save({"epoch": 1, "notes": "x"}, other)  # not a state dict: the keys are listed
    assert linear_eval.main(["--checkpoint", str(other)]) == 2
    assert "missing required keys" in _one_line_error(capsys.readouterr().err)
