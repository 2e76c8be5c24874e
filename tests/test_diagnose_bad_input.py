"""`python -m mitools.diagnose`: more bad inputs, each one line `error: ...` naming the problem."""

import json

import numpy as np
import pytest
import torch

import mitools.diagnose as diagnose_module
from mitools.diagnose import EXIT_BAD_INPUT, EXIT_OK, main
from mitools.models import EncoderSpec, SSLModel

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
    _assert_bad_input(code, err, f"--out {out}", "not a directory")


def test_out_on_embeddings_file(tmp_path, capsys):
    path = tmp_path / "z.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 8)))
    afile = tmp_path / "report"
    afile.write_text("")
    code, _, err = _run([path, "--out", afile], capsys)
    _assert_bad_input(code, err, str(afile), "not a directory")
    assert "Errno" not in err


def test_layer_help_states_the_calibration(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "projector" in text and "0.21-0.22" in text and "0.25" in text
    assert "indicative" in text
