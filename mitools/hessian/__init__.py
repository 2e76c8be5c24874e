"""Hessian spectra of (SSL) losses: HVP operator, top eigenvalues, trace, spectral density.

Quick use::

    x1, x2 = freeze_views(dataset, 256, BatchAugment(get_preset("digits")), seed=0)
    loss = build_loss("simclr")
    op = HessianOperator(model, lambda m, b: loss(m(b[0])[1], m(b[1])[1]), (x1, x2))
    top_eigenvalues(op, k=5).eigenvalues, trace(op, "hutch++", 96).estimate

``pyhessian_top_eigenvalues`` / ``pyhessian_trace`` / ``pyhessian_density`` compute the same
quantities through PyHessian 0.1 with the same closure (see :mod:`mitools.hessian.pyhessian_backend`).
"""

from __future__ import annotations

from typing import Any

from mitools.hessian.operator import (
    HessianOperator,
    bn_context,
    per_layer_operators,
    select_parameters,
)
from mitools.hessian.pyhessian_backend import (
    pyhessian_density,
    pyhessian_top_eigenvalues,
    pyhessian_trace,
    torch_eig_shim,
)
from mitools.hessian.spectra import (
    DensityResult,
    EigenResult,
    TraceResult,
    dense_operator,
    gaussian_density,
    spectral_density,
    top_eigenvalues,
    trace,
)
from mitools.hessian.views import freeze_views

__all__ = [
    "HessianOperator",
    "per_layer_operators",
    "bn_context",
    "select_parameters",
    "top_eigenvalues",
    "trace",
    "spectral_density",
    "dense_operator",
    "gaussian_density",
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "freeze_views",
    "pyhessian_top_eigenvalues",
    "pyhessian_trace",
    "pyhessian_density",
    "torch_eig_shim",
    "hessian_summary",
]


def hessian_summary(
    model: Any,
    loss_fn: Any,
    batch: Any,
    k: int = 5,
    n_probes: int = 96,
    seed: int = 0,
    params: Any = None,
    bn_mode: str = "eval",
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> dict[str, Any]:
    """JSON-ready summary: n_params, loss, top-k and bottom-1 eigenvalues (Lanczos, with
    iterations/convergence), Hutch++ trace with std error. Used by ``mitools.diagnose --hessian``."""
    op = HessianOperator(model, loss_fn, batch, params=params, bn_mode=bn_mode)
    k = min(int(k), op.n_params)
    eig = top_eigenvalues(
        op, k=k, which="both", tol=tol, max_iter=max_iter, seed=seed, return_eigenvectors=False
    )
    tr = trace(op, "hutch++" if n_probes >= 3 else "hutchinson", n_probes, seed=seed)
    return {
        "n_params": op.n_params,
        "loss": op.loss,
        "bn_mode": bn_mode,
        "top_eigenvalues": [float(v) for v in eig.largest],
        "min_eigenvalue": float(eig.smallest[0]),
        "lanczos_iterations": eig.iterations,
        "lanczos_converged": eig.converged,
        "max_residual": float(eig.residual_norms.max()),
        "trace": tr.estimate,
        "trace_std_error": tr.std_error,
        "trace_method": tr.method,
        "n_probes": tr.n_probes,
        "seed": seed,
    }
