"""`python -m mitools.diagnose CKPT --hessian`: the summary is the Hessian of the checkpoint's own
loss on the frozen views, checked against a dense torch.func Hessian of the same function."""

from __future__ import annotations

import json

import torch

from mitools.checkpoint import save_checkpoint
from mitools.diagnose import hessian_views, main
from mitools.losses import build_loss
from mitools.models import EncoderSpec, SSLModel


def _checkpoint(path):
    torch.manual_seed(0)
    spec = EncoderSpec(arch="small_cnn", in_channels=1, widths=[2, 3, 3], projector_dims=[4])
    model = SSLModel(spec)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "encoder_spec": spec.to_dict(),
            "config": {
                "data": {"name": "digits", "root": None},
                "loss": {"name": "mio", "params": {}},
            },
            "epoch": 1,
            "step": 1,
        },
    )
    return model


def test_hessian_summary_matches_dense_hessian(tmp_path, capsys):
    path = tmp_path / "last.pt"
    model = _checkpoint(path).double().eval()
    code = main([str(path), "--hessian", "--format", "json", "--samples", "64"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["hessian"]
    assert summary["loss_name"] == "mio" and summary["n_views"] == 64

    x1, x2 = (v.double() for v in hessian_views("digits", None, 64, seed=0))
    loss = build_loss("mio").eval()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def f(flat):
        chunks = torch.split(flat, [params[n].numel() for n in names])
        new = {n: c.view_as(params[n]) for n, c in zip(names, chunks, strict=True)}
        _, z1 = torch.func.functional_call(model, {**new, **buffers}, (x1,))
        _, z2 = torch.func.functional_call(model, {**new, **buffers}, (x2,))
        return loss(z1, z2)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    dense = torch.func.hessian(f)(flat)
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert summary["n_params"] == flat.numel()
    top = torch.tensor(summary["top_eigenvalues"], dtype=torch.float64)
    expected = eigenvalues.flip(0)[: top.numel()]
    scale = eigenvalues.abs().max()
    torch.testing.assert_close(top, expected, rtol=1e-4, atol=1e-6 * float(scale))
    assert abs(summary["min_eigenvalue"] - float(eigenvalues[0])) <= 1e-4 * float(scale)
    exact_trace = float(torch.trace(dense))
    assert abs(summary["trace"] - exact_trace) <= 3 * summary["trace_std_error"] + 1e-8 * float(
        scale
    )


def test_hessian_text_output(tmp_path, capsys):
    path = tmp_path / "last.pt"
    _checkpoint(path)
    assert main([str(path), "--hessian", "--samples", "64"]) == 0
    out = capsys.readouterr().out
    assert "Hessian of the mio loss" in out and "top eigenvalues" in out


def test_hessian_start_and_end_lines(tmp_path, capsys):
    # minutes of silence on a real model: the size is said before, the time after
    path = tmp_path / "last.pt"
    model = _checkpoint(path)
    assert main([str(path), "--hessian", "--samples", "64", "--format", "json"]) == 0
    err = capsys.readouterr().err
    n_params = sum(p.numel() for p in model.parameters())
    start = next(ln for ln in err.splitlines() if ln.startswith("Hessian: "))
    assert f"{n_params} parameters" in start and "Hessian-vector products" in start
    assert "64 frozen view pairs" in start
    assert any(ln.startswith("Hessian: done in ") for ln in err.splitlines()), err
