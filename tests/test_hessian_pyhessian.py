"""Backend parity: mitools.hessian and PyHessian 0.1 (through the adapter) on the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pyhessian")

from test_hessian import case  # noqa: E402

from mitools.hessian import (  # noqa: E402
    HessianOperator,
    pyhessian_density,
    pyhessian_top_eigenvalues,
    pyhessian_trace,
    spectral_density,
    top_eigenvalues,
    torch_eig_shim,
    trace,
)


def test_torch_eig_is_removed_and_shim_is_scoped():
    had = hasattr(torch, "eig")
    T = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    with torch_eig_shim():
        vals, vecs = torch.eig(T, eigenvectors=True)
        np.testing.assert_allclose(vals[:, 0].numpy(), np.linalg.eigvalsh(T.numpy()), rtol=1e-6)
        assert torch.allclose(T.double() @ vecs, vecs * vals[:, 0], atol=1e-12)
    assert hasattr(torch, "eig") == had


@pytest.mark.parametrize("kind,name", [("mlp", "barlow_twins"), ("cnn", "simclr")])
def test_top_eigenvalue_and_trace_agree(kind, name):
    model, fn, batch, H, ev = case(kind, name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = top_eigenvalues(HessianOperator(model, fn, batch), k=1, which="both", tol=1e-10)
    theirs = pyhessian_top_eigenvalues(model, fn, batch, k=1, max_iter=3000, tol=1e-9, seed=0)
    dominant = max(ours.eigenvalues, key=abs)  # PyHessian's power iteration: largest |lambda|
    np.testing.assert_allclose(theirs.eigenvalues[0], dominant, rtol=1e-4)
    t_ours = trace(HessianOperator(model, fn, batch), "hutchinson", 64, seed=0)
    t_theirs = pyhessian_trace(model, fn, batch, n_probes=64, seed=0)
    truth = float(torch.trace(H))
    assert t_theirs.n_probes == 64
    assert abs(t_theirs.estimate - truth) <= 3 * t_theirs.std_error
    diff_se = np.hypot(t_ours.std_error, t_theirs.std_error)
    assert abs(t_ours.estimate - t_theirs.estimate) <= 4 * diff_se
    assert model.training is False and all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )
    assert all(p.grad is None for p in model.parameters())


def test_density_runs_and_matches_moments():
    model, fn, batch, H, ev = case("mlp", "vicreg")
    n = H.shape[0]
    theirs = pyhessian_density(model, fn, batch, steps=n, runs=1, seed=0)
    ours = spectral_density(HessianOperator(model, fn, batch), runs=1, steps=n, seed=0)
    # full Krylov space: both quadratures are exact for every moment of this start vector,
    # Rademacher start: moment 2 is ||H z||^2/n, and for p=1 the Hutchinson sample
    np.testing.assert_allclose(theirs.weights.sum(), 1.0, rtol=1e-4)
    # nodes of a full-length run are the eigenvalues (float32 tridiagonal in PyHessian)
    scale = float(ev.abs().max())
    top_theirs = np.sort(theirs.nodes[0])[::-1][:3]
    np.testing.assert_allclose(top_theirs, ev.flip(0)[:3].numpy(), atol=1e-4 * scale)
    np.testing.assert_allclose(np.sort(ours.nodes[0]), ev.numpy(), atol=1e-8 * scale)
