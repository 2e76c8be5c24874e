"""`python -m mitools.diagnose`: inputs, outputs, exit codes and one-line errors on bad input."""

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mitools.diagnose as diagnose_module
from mitools.checkpoint import save_checkpoint
from mitools.diagnose import EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_OK, main
from mitools.models import EncoderSpec, SSLModel
from mitools.spectrum import collapse_report

REPO = Path(__file__).resolve().parent.parent
SPEC = EncoderSpec(arch="small_cnn", in_channels=1, widths=[8, 16, 16], projector_dims=[32, 16])


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_bad_input(code, err, *fragments):
    assert code == EXIT_BAD_INPUT
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trainer_ckpt(tmp_path_factory) -> Path:
    """A checkpoint in the trainer's schema (mitools.checkpoint.save_checkpoint)."""
    torch.manual_seed(0)
    model = SSLModel(SPEC)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    state = {
        "model": model.state_dict(),
        "epoch": 3,
        "step": 30,
        "encoder_spec": SPEC.to_dict(),
        "config": {"data": {"name": "digits", "root": None}},
    }
    return save_checkpoint(path, state, verify=True)


def test_trainer_checkpoint_text_json_and_plots(trainer_ckpt, tmp_path, capsys):
    out = tmp_path / "report"
    code, text, err = _run(
        [trainer_ckpt, "--layer", "both", "--out", out, "--samples", 200], capsys
    )
    assert code == EXIT_OK, err
    assert "effective rank (RankMe)" in text and "backbone" in text and "projector" in text
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "checkpoint" and report["data"] == "digits"
    assert report["split"] == "val"
    for layer, dim in (("backbone", 16), ("projector", 16)):
        rep = report["layers"][layer]
        assert rep["n_samples"] == 200 and rep["dim"] == dim
        assert len(rep["singular_values"]) == dim
        assert (out / f"spectrum_{layer}.png").stat().st_size > 5000
    # The numbers are those of collapse_report on the same embeddings (independent re-embedding).
    from mitools.data import build_dataset, eval_transform
    from mitools.models import build_encoder_from_checkpoint_dict

    ck = torch.load(trainer_ckpt, weights_only=True)
    model = build_encoder_from_checkpoint_dict(ck["encoder_spec"], ck["model"])
    ds = build_dataset("digits", None, "val", transform=eval_transform("digits"))
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size=200, replace=False))
    x = torch.stack([ds[i][0] for i in idx])
    with torch.no_grad():
        z = model(x)[1].numpy()
    assert report["layers"]["projector"]["effective_rank"] == pytest.approx(
        collapse_report(z).effective_rank, rel=1e-5
    )
    # JSON on stdout, default layer = projector only.
    code, text, _ = _run([trainer_ckpt, "--format", "json", "--samples", 100], capsys)
    assert code == EXIT_OK
    assert list(json.loads(text)["layers"]) == ["projector"]


def test_plain_torchvision_state_dict(tmp_path, capsys):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # CIFAR stem, grey input
    net.maxpool = nn.Identity()
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # DDP-style
    args = [path, "--data", "digits", "--samples", 64]
    code, _, err = _run(args, capsys)
    _assert_bad_input(code, err, "--arch")
    code, text, err = _run([*args, "--arch", "resnet18", "--cifar-stem"], capsys)
    assert code == EXIT_OK, err
    assert "64 x 512" in text
    # 64 samples < 512 dims: warned, not refused.
    assert "rank-limited" in err
    # The same weights under another architecture: the first mismatching keys are named.
    code, _, err = _run([*args, "--arch", "resnet50", "--cifar-stem"], capsys)
    _assert_bad_input(code, err, "another architecture", "layer1.0.conv3.weight")
    code, _, err = _run(
        [*args, "--arch", "resnet18", "--cifar-stem", "--layer", "projector"], capsys
    )
    _assert_bad_input(code, err, "projector")
    # Lightning-style: {"state_dict": {"model.<key>": ...}, "epoch": ...} gives the same report
    lightning = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3},
        lightning,
    )
    reports = []
    for source in (path, lightning):
        code, text, err = _run(
            [source, *args[1:], "--arch", "resnet18", "--cifar-stem", "--format", "json"], capsys
        )
        assert code == EXIT_OK, err
        reports.append(json.loads(text))
    assert "read the file's 'state_dict' entry" in reports[1]["notes"]
    assert reports[1]["layers"] == reports[0]["layers"]


def test_embeddings_files_and_exit_codes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((500, 32)).astype(np.float32)
    np.save(tmp_path / "healthy.npy", healthy)
    code, text, err = _run([tmp_path / "healthy.npy", "--fail-on", "collapse"], capsys)
    assert code == EXIT_OK, err
    assert "HEALTHY" in text
    constant = np.tile(rng.standard_normal(32), (500, 1))
    torch.save(torch.from_numpy(constant), tmp_path / "constant.pt")
    code, text, _ = _run([tmp_path / "constant.pt", "--fail-on", "collapse"], capsys)
    assert code == EXIT_COLLAPSE and "COMPLETE_COLLAPSE" in text
    code, _, _ = _run([tmp_path / "constant.pt"], capsys)
    assert code == EXIT_OK  # collapse without --fail-on is still a written report
    # Dict with a second view: alignment is reported.
    pair = {"z": torch.from_numpy(healthy), "z2": torch.from_numpy(healthy * 1.5)}
    torch.save(pair, tmp_path / "pair.pt")
    code, text, _ = _run([tmp_path / "pair.pt", "--format", "json"], capsys)
    assert code == EXIT_OK
    assert json.loads(text)["layers"]["z"]["alignment"] == pytest.approx(0.0, abs=1e-12)


def test_module_entry_point(tmp_path):
    np.save(tmp_path / "z.npy", np.random.default_rng(1).standard_normal((100, 8)))
    env = {**os.environ, "MITOOLS_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mitools.diagnose", str(tmp_path / "z.npy"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.json").is_file() and (tmp_path / "spectrum_z.png").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "mitools.diagnose", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "no such file" in proc.stderr


# ----------------------------------------------------------------------------- bad input


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    _assert_bad_input(*_run([tmp_path / "empty.pt"], capsys)[::2], "empty")
    (tmp_path / "empty.npy").write_bytes(b"")
    _assert_bad_input(*_run([tmp_path / "empty.npy"], capsys)[::2], ".npy")


def test_truncated_checkpoint(trainer_ckpt, tmp_path, capsys):
    data = trainer_ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _assert_bad_input(*_run([tmp_path / "cut.pt"], capsys)[::2], "truncated")


def test_text_file(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("epoch 3: loss 0.5\n")
    _assert_bad_input(*_run([tmp_path / "notes.pt"], capsys)[::2], "text file")


def test_zip_that_is_not_a_checkpoint(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as zf:
        zf.writestr("readme.txt", "hello")
    _assert_bad_input(*_run([tmp_path / "archive.pt"], capsys)[::2], "not a torch checkpoint")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["raw_pickle", "torch_zip"])
def test_pickle_that_would_run_code_is_refused(tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    payload = {"model": _Exploit(marker), "epoch": 0, "step": 0}
    path = tmp_path / "evil.pt"
    if container == "raw_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    # Sanity: an ordinary unpickler WOULD run it (so the test can fail).
    if container == "raw_pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()
        marker.unlink()
    code, _, err = _run([path], capsys)
    _assert_bad_input(code, err, "refused")
    assert not marker.exists()


def test_non_finite_weights_and_embeddings(tmp_path, capsys):
    model = SSLModel(SPEC)
    sd = model.state_dict()
    sd["projector.0.weight"][0, 0] = float("nan")
    state = {"model": sd, "epoch": 1, "step": 1, "encoder_spec": SPEC.to_dict()}
    save_checkpoint(tmp_path / "nan.pt", state)
    _assert_bad_input(
        *_run([tmp_path / "nan.pt", "--data", "digits"], capsys)[::2], "projector.0.weight"
    )
    z = np.random.default_rng(0).standard_normal((50, 4))
    z[3, 1] = np.inf
    np.save(tmp_path / "inf.npy", z)
    _assert_bad_input(*_run([tmp_path / "inf.npy"], capsys)[::2], "non-finite")


def test_unknown_dataset_and_missing_folder(trainer_ckpt, capsys):
    _assert_bad_input(*_run([trainer_ckpt, "--data", "mnist"], capsys)[::2], "unknown dataset")
    _assert_bad_input(
        *_run([trainer_ckpt, "--data", "cifar10:/nonexistent/cifar"], capsys)[::2],
        "/nonexistent/cifar",
    )


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        main([str(tmp_path / "empty.pt"), "--debug"])


def test_hessian_flag_message(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((40, 4)))
    code, _, err = _run([tmp_path / "z.npy", "--hessian"], capsys)
    assert code == EXIT_OK and "--hessian: needs a trainer checkpoint" in err


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_real_digits_runs_alignment_flagged_emi_mio_healthy(tmp_path, capsys):
    """Trainer runs of equal length (analysis.collapse quick: the quick digits runs), 8 epochs.

    At the quick runs' 3 epochs the alignment control is not reliably collapsed: its RankMe / d
    was 0.247 (seed 0), 0.296 (seed 1: healthy) and 0.243 (seed 2) against the 0.25 cut. At 8
    epochs it was 0.159 / 0.202 / 0.179, while EMI and MIO stayed at 0.58-0.66 (seeds 0-2)."""
    from analysis.collapse import run
    from analysis.digits_runs import run_dir_for

    df = run(quick=True, out=tmp_path / "results", run_root=tmp_path / "runs", epochs=8)
    assert df.epoch.max() == 8
    final = df[df.epoch == df.epoch.max()].set_index("objective")
    assert final.loc["alignment", "verdict"] != "healthy"
    assert final.loc["emi", "verdict"] == "healthy"
    assert final.loc["mio", "verdict"] == "healthy"
    assert (tmp_path / "results" / "collapse.csv").is_file()
    assert (tmp_path / "results" / "collapse_spectra.csv").is_file()
    # The CLI on the trainer's own checkpoint agrees, and --fail-on turns it into exit 1.
    ckpt = run_dir_for("alignment", tmp_path / "runs", quick=True) / "last.pt"
    code, _, err = _run([ckpt, "--fail-on", "collapse"], capsys)
    assert code == EXIT_COLLAPSE, err
    emi = run_dir_for("emi", tmp_path / "runs", quick=True) / "last.pt"
    code, _, err = _run([emi, "--fail-on", "collapse"], capsys)
    assert code == EXIT_OK, err


# ----------------------------------------------------------------------------- more bad input
# encoder_spec that is not a mapping, embeddings too large or too small for the spectrum,
# --data without a root, --out checked before any work, and the --layer calibration note.


def _trainer_state(encoder_spec):
    torch.manual_seed(0)
    return {
        "model": SSLModel(SPEC).state_dict(),
        "epoch": 1,
        "step": 10,
        "encoder_spec": encoder_spec,
        "config": {"data": {"name": "digits", "root": None}},
    }


@pytest.mark.parametrize("encoder_spec", [None, "resnet18", ["small_cnn"]])
def test_encoder_spec_not_a_mapping(encoder_spec, tmp_path, capsys):
    path = tmp_path / "spec.pt"
    torch.save(_trainer_state(encoder_spec), path)
    code, _, err = _run([path, "--samples", 50], capsys)
    line = _assert_bad_input(code, err, str(path), "encoder_spec", "mapping (dict)", "trainer")
    assert type(encoder_spec).__name__ in line
    assert "NoneType' object" not in line and "EncoderSpec keys" not in line


def test_encoder_spec_with_bad_content_names_the_file(tmp_path, capsys):
    path = tmp_path / "spec.pt"
    torch.save(_trainer_state({**SPEC.to_dict(), "arch": "vgg"}), path)
    code, _, err = _run([path, "--samples", 50], capsys)
    _assert_bad_input(code, err, str(path), "encoder_spec", "vgg")


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.float32, 1e20), (np.float64, 1e150), (np.float32, 1e30), (np.float32, 1e37)],
)
def test_embeddings_too_large(dtype, scale, tmp_path, capsys):
    path = tmp_path / "huge.npy"
    z = np.random.default_rng(0).standard_normal((500, 32)) * scale
    np.save(path, z.astype(dtype))
    code, _, err = _run([path], capsys)
    line = _assert_bad_input(code, err, str(path), "too large", "max |z|", "diverged")
    assert "LAPACK" not in line and "sterf" not in line


def test_large_but_analysable_embeddings_are_unchanged(tmp_path, capsys):
    """Scale only multiplies the singular values: RankMe and the verdict do not move."""
    z = np.random.default_rng(0).standard_normal((500, 32))
    rankme = []
    for scale in (1.0, 1e10):
        path = tmp_path / f"z{scale:g}.npy"
        np.save(path, z * scale)
        code, out, err = _run([path, "--format", "json"], capsys)
        assert code == EXIT_OK, err
        rep = json.loads(out)["layers"]["z"]
        assert rep["verdict"] == "healthy"
        rankme.append(rep["effective_rank"])
    assert rankme[1] == pytest.approx(rankme[0], rel=1e-9)


@pytest.mark.parametrize(
    ("shape", "fragment"), [((1, 8), "at least 2 rows"), ((10, 0), "at least 1 column")]
)
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_embeddings_too_few_rows_or_columns(shape, fragment, suffix, tmp_path, capsys):
    path = tmp_path / f"emb{suffix}"
    z = np.zeros(shape)
    if suffix == ".npy":
        np.save(path, z)
    else:
        torch.save({"z": torch.from_numpy(z)}, path)
    code, _, err = _run([path], capsys)
    line = _assert_bad_input(code, err, str(path), fragment, str(shape))
    assert "accumulator" not in line and "batch" not in line


def test_data_without_root_names_the_diagnose_syntax(tmp_path, capsys):
    path = tmp_path / "last.pt"
    torch.save(_trainer_state(SPEC.to_dict()), path)
    code, _, err = _run([path, "--data", "cifar10", "--samples", 50], capsys)
    line = _assert_bad_input(code, err, "cifar10", "--data cifar10:ROOT")
    assert "--set" not in line


@pytest.mark.parametrize("under_file", [False, True])
def test_out_is_checked_before_any_work(under_file, tmp_path, capsys, monkeypatch):
    path = tmp_path / "last.pt"
    torch.save(_trainer_state(SPEC.to_dict()), path)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / "sub" if under_file else afile

    def no_work(*args, **kwargs):
        pytest.fail("embedded before checking --out")

    monkeypatch.setattr(diagnose_module, "embed", no_work)
    monkeypatch.setattr(diagnose_module, "load_input", no_work)
    code, _, err = _run([path, "--out", out, "--samples", 50], capsys)
    _assert_bad_input(code, err, f"--out {out}", "not a folder")


def test_out_on_embeddings_file(tmp_path, capsys):
    path = tmp_path / "z.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 8)))
    afile = tmp_path / "report"
    afile.write_text("")
    code, _, err = _run([path, "--out", afile], capsys)
    _assert_bad_input(code, err, str(afile), "not a folder")
    assert "Errno" not in err


def test_layer_help_states_the_calibration(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "projector" in text and "0.21-0.22" in text and "0.25" in text
    assert "indicative" in text


def test_options_that_do_not_apply_are_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "z.npy", rng.standard_normal((300, 16)).astype(np.float32))
    code, _, err = _run([tmp_path / "z.npy", "--arch", "resnet18", "--layer", "backbone"], capsys)
    assert code == EXIT_OK, err
    assert "warning: --arch, --layer ignored: the input is embeddings" in err
    path = tmp_path / "ckpt.pt"
    torch.save(_trainer_state(SPEC.to_dict()), path)
    code, _, err = _run([path, "--samples", 64, "--arch", "small_cnn"], capsys)
    assert code == EXIT_OK, err
    assert "warning: --arch ignored: the checkpoint stores its encoder" in err
    code, _, err = _run([path, "--samples", 64], capsys)
    assert code == EXIT_OK and "ignored" not in err


# ----------------------------------------------------------------------------- audit 10


def test_full_model_state_dict_names_the_left_out_projector_and_the_caveat(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "model_sd.pt"
    torch.save(SSLModel(SPEC).state_dict(), path)  # backbone.* and projector.* keys
    args = [path, "--arch", "small_cnn", "--data", "digits", "--samples", 64]
    code, text, err = _run(args, capsys)
    assert code == EXIT_OK, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1, err
    assert (
        "projector.* (" in notes[0]
        and "projector of a plain state dict is not loaded" in (notes[0])
    )
    assert "backbone: note: the backbone verdict is indicative only" in text
    code, text, _ = _run([*args, "--format", "json"], capsys)
    assert code == EXIT_OK
    assert "indicative only" in json.loads(text)["layers"]["backbone"]["note"]


def test_projector_verdict_has_no_caveat(trainer_ckpt, capsys):
    code, text, err = _run([trainer_ckpt, "--samples", 64], capsys)
    assert code == EXIT_OK, err
    assert "indicative only" not in text


def _fake_embed(backbone_healthy: bool, projector_healthy: bool):
    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((300, 16))
    collapsed = rng.standard_normal((300, 1)) @ rng.standard_normal((1, 16))  # rank 1
    made = {
        "backbone": healthy if backbone_healthy else collapsed,
        "projector": healthy if projector_healthy else collapsed,
    }
    return lambda model, dataset, layers, **kw: {layer: made[layer] for layer in layers}


@pytest.mark.parametrize(
    ("backbone_ok", "projector_ok", "layer", "expected"),
    [
        (False, True, "both", EXIT_OK),  # a healthy EMI run: backbone under the cut, not judged
        (True, False, "both", EXIT_COLLAPSE),
        (False, True, "backbone", EXIT_COLLAPSE),  # the only layer analysed is judged
        (False, True, "projector", EXIT_OK),
    ],
)
def test_fail_on_judges_the_projector_when_both_are_computed(
    trainer_ckpt, capsys, monkeypatch, backbone_ok, projector_ok, layer, expected
):
    monkeypatch.setattr(diagnose_module, "embed", _fake_embed(backbone_ok, projector_ok))
    code, text, err = _run([trainer_ckpt, "--layer", layer, "--fail-on", "collapse"], capsys)
    assert code == expected, text + err
    if layer == "both":
        assert "COLLAPSE" in text and "HEALTHY" in text


def test_fail_on_help_and_docstring_say_what_is_judged(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--fail-on" in text and "the projector when it was analysed" in text
    doc = " ".join(diagnose_module.__doc__.split())
    assert "the backbone verdict, which is indicative only, does not count" in doc


def _grey_resnet18_state():
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net.state_dict()


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_channel_mismatch_names_input_channels_and_suggests_data(arch, tmp_path, capsys):
    torch.manual_seed(0)
    state = SSLModel(SPEC).backbone.state_dict() if arch == "small_cnn" else _grey_resnet18_state()
    path = tmp_path / f"{arch}.pt"
    torch.save(state, path)
    extra = ["--cifar-stem"] if arch == "resnet18" else []
    code, _, err = _run([path, "--arch", arch, *extra], capsys)
    line = _assert_bad_input(code, err, "input-channel mismatch", "1-channel", "pass --data")
    assert "digits" in line and "another architecture" not in line
    # and with --data for a 3-channel dataset: the dataset's channels are named
    code, _, err = _run([path, "--arch", arch, *extra, "--data", "cifar10:/nowhere"], capsys)
    _assert_bad_input(code, err, "input-channel mismatch", "built for 3 (from --data)")


def test_npz_and_other_formats_name_the_accepted_ones(tmp_path, capsys):
    np.savez(tmp_path / "z.npz", a=np.zeros((10, 4)))
    (tmp_path / "z.csv").write_text("1,2\n3,4\n")
    for name in ("z.npz", "z.csv"):
        code, _, err = _run([tmp_path / name], capsys)
        _assert_bad_input(code, err, name, "accepted:", ".npy", "'z'")


def test_embeddings_under_another_key_name_the_expected_key(tmp_path, capsys):
    torch.save({"emb": torch.randn(100, 8)}, tmp_path / "dict.pt")
    code, _, err = _run([tmp_path / "dict.pt"], capsys)
    _assert_bad_input(code, err, "--arch", "under the key 'z' or 'embeddings'")


@pytest.mark.parametrize("content", ["garbage", "objects"])
def test_bad_npy_is_one_short_line(content, tmp_path, capsys):
    path = tmp_path / "bad.npy"
    if content == "garbage":
        path.write_bytes(os.urandom(256))
    else:
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    code, _, err = _run([path], capsys)
    line = _assert_bad_input(code, err, str(path), "expected a 2-D numeric array")
    assert "allow_pickle" not in line and "pickle.load" not in line


def test_samples_on_embeddings_is_named_as_ignored(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((50, 8)))
    code, _, err = _run([tmp_path / "z.npy", "--samples", 10, "--data", "digits"], capsys)
    assert code == EXIT_OK, err
    assert "warning: --data, --samples ignored: the input is embeddings" in err
    code, _, err = _run([tmp_path / "z.npy"], capsys)
    assert code == EXIT_OK and "ignored" not in err


def test_alignment_row_says_why_it_is_empty():
    """Alignment needs positive pairs: the table says so instead of a bare '-' without z2, and
    shows the value (mean squared distance of the normalised pairs) with it."""
    from mitools.diagnose import format_table

    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 16))
    row = [
        line for line in format_table({"z": collapse_report(z)}).splitlines() if "alignment" in line
    ]
    assert row and row[0].split()[-3:] == ["-", "(needs", "z2)"]
    report = collapse_report(z, z2=z)  # identical views: alignment 0
    row = [line for line in format_table({"z": report}).splitlines() if "alignment" in line]
    assert row[0].split()[-1] == "0"
