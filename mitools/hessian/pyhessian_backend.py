"""Adapter running PyHessian 0.1 (``pip install pyhessian==0.1``) on any loss closure.

PyHessian hard-codes ``loss = criterion(model(inputs), targets)``, forces ``model.eval()`` and its
``density()`` calls ``torch.eig`` (removed from PyTorch). The adapter:

- wraps the closure in a module whose ``forward(dummy)`` returns ``loss_fn(model, batch)`` (the
  batch lives in the wrapper) and passes the identity criterion ``criterion(out, _) = out``, so
  label-free SSL losses fit;
- applies :func:`~mitools.hessian.operator.bn_context` inside the wrapper's forward, so
  ``bn_mode="train"`` is honoured despite PyHessian's ``eval()`` and the model's mode, BN flags
  and buffers are restored afterwards;
- restricts PyHessian to the selected parameters by switching ``requires_grad`` off on the others
  for the duration (restored after), and clears the ``.grad`` fields PyHessian fills (restoring
  the caller's);
- supplies ``torch.eig`` inside :func:`torch_eig_shim` (a context manager that installs a
  ``torch.linalg.eigh``-based replacement, valid because PyHessian only decomposes its symmetric
  Lanczos tridiagonal, and removes it on exit);
- seeds PyHessian's global-RNG probes with ``torch.random.fork_rng`` + ``manual_seed(seed)``.

PyHessian conventions kept: its power iteration finds the eigenvalues of LARGEST MAGNITUDE
(deflated), its probes are Rademacher, and its tridiagonal is assembled in float32. Fixed
iteration counts are obtained by passing ``tol=-inf`` (its stopping tests never fire).

Bad inputs raise the core API's one-line ValueErrors before PyHessian runs (it has no checks of
its own: k > n returns n + 1 values, a NaN loss gives a NaN trace): the counts (k in [1, n],
n_probes >= 2, steps/runs >= 1, max_iter >= 1), grid and sigma, and the loss, evaluated once in
the session: a finite scalar tensor depending on the selected parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mitools.hessian.operator import (
    _check_loss,
    _check_loss_graph,
    bn_context,
    select_parameters,
)
from mitools.hessian.spectra import (
    DensityResult,
    EigenResult,
    TraceResult,
    _check_count,
    _check_grid,
    _check_k,
    _check_sigma,
    gaussian_density,
)

__all__ = [
    "torch_eig_shim",
    "pyhessian_top_eigenvalues",
    "pyhessian_trace",
    "pyhessian_density",
]


def _eig_shim(A: Tensor, eigenvectors: bool = False) -> tuple[Tensor, Tensor]:
    """Old ``torch.eig`` output format for a SYMMETRIC matrix: ((n, 2) [real, imag], vectors)."""
    if not torch.allclose(A, A.T):
        raise ValueError("torch_eig_shim only supports symmetric matrices")
    w, V = torch.linalg.eigh(A.double())
    vals = torch.stack([w, torch.zeros_like(w)], 1)
    return vals, (V if eigenvectors else torch.empty(0, dtype=V.dtype))


@contextmanager
def torch_eig_shim() -> Iterator[None]:
    """Temporarily provide ``torch.eig`` (symmetric input only) backed by ``torch.linalg.eigh``."""
    had = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)
    torch.eig = _eig_shim
    try:
        yield
    finally:
        if had:
            torch.eig = old
        else:
            del torch.eig


class _ClosureAsModel(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: Callable, batch: Any, bn_mode: str) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)
        object.__setattr__(self, "_batch", batch)
        self.bn_mode = bn_mode

    def forward(self, _dummy: Tensor) -> Tensor:
        with bn_context(self.model, self.bn_mode):
            return self._loss_fn(self.model, self._batch)


def _identity_criterion(outputs: Tensor, _targets: Tensor) -> Tensor:
    return outputs


@contextmanager
def _pyhessian_session(
    model: nn.Module,
    loss_fn: Callable,
    batch: Any,
    params: Iterable[nn.Parameter] | str | re.Pattern | None,
    bn_mode: str,
    seed: int,
):
    try:
        from pyhessian import hessian as PyHessian
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ImportError("the pyhessian backend needs `pip install pyhessian==0.1`") from exc
    chosen = select_parameters(model, params)
    keep = {id(p) for _, p in chosen}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = [(p, p.grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    first = next(iter(model.parameters()))
    device = first.device
    wrapper = _ClosureAsModel(model, loss_fn, batch, bn_mode)
    dummy = torch.zeros(1, device=device)
    devices = [device] if device.type == "cuda" else []
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
            p.grad = None
        with torch.random.fork_rng(devices=devices):
            # the check runs inside the fork (a random closure leaves the caller's RNG alone) and
            # before the seeding (PyHessian's probes are the same as without the check)
            with torch.enable_grad():
                loss = _check_loss(wrapper(dummy))
            _check_loss_graph(loss, [n for n, _ in chosen])
            del loss
            torch.manual_seed(int(seed))
            h = PyHessian(
                wrapper, _identity_criterion, data=(dummy, dummy), cuda=device.type == "cuda"
            )
            yield h, [n for n, _ in chosen]
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for p, g in grads:
            p.grad = g
        for m, was in modes:
            m.training = was


def _n_selected(model: nn.Module, params: Any) -> int:
    return sum(p.numel() for _, p in select_parameters(model, params))


def _flat(vs: list[Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in vs]).detach()


def pyhessian_top_eigenvalues(
    model: nn.Module,
    loss_fn: Callable,
    batch: Any,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    params: Any = None,
    bn_mode: str = "eval",
) -> EigenResult:
    """PyHessian's deflated power iteration: the ``k`` eigenvalues of largest |lambda|.

    ``tol``: PyHessian's relative change between consecutive estimates (``-inf``: always
    ``max_iter`` iterations). Residual norms are computed afterwards with our own operator;
    ``converged`` means every residual is below ``1e-3 max|lambda|`` (PyHessian reports nothing).
    """
    from mitools.hessian.operator import HessianOperator

    _check_k(k, _n_selected(model, params))
    _check_count("max_iter", max_iter, 1)
    with _pyhessian_session(model, loss_fn, batch, params, bn_mode, seed) as (h, _):
        vals, vecs = h.eigenvalues(maxIter=int(max_iter), tol=float(tol), top_n=int(k))
    Y = torch.stack([_flat(v) for v in vecs], 1)
    op = HessianOperator(model, loss_fn, batch, params=params, bn_mode=bn_mode, hvp="graph")
    lam = np.asarray(vals, dtype=np.float64)
    Y = Y / torch.linalg.vector_norm(Y, dim=0)
    res = torch.linalg.vector_norm(
        op.matmat(Y.to(op.dtype)) - Y.to(op.dtype) * torch.as_tensor(lam, dtype=op.dtype), dim=0
    )
    res_np = res.double().cpu().numpy()
    return EigenResult(
        eigenvalues=lam,
        eigenvectors=Y,
        residual_norms=res_np,
        iterations=-1,  # PyHessian does not report its iteration count
        n_matvecs=-1,
        converged=bool(np.all(res_np <= 1e-3 * np.abs(lam).max())),
        method="pyhessian-power",
        which="magnitude",
        k=int(k),
        tol=float(tol),
        max_iter=int(max_iter),
        seed=int(seed),
    )


def pyhessian_trace(
    model: nn.Module,
    loss_fn: Callable,
    batch: Any,
    n_probes: int = 64,
    seed: int = 0,
    params: Any = None,
    bn_mode: str = "eval",
) -> TraceResult:
    """PyHessian's Hutchinson estimate with exactly ``n_probes`` (>= 2, for the std error)
    Rademacher probes."""
    _check_count("n_probes", n_probes, 2)
    with _pyhessian_session(model, loss_fn, batch, params, bn_mode, seed) as (h, _):
        samples = np.asarray(h.trace(maxIter=int(n_probes), tol=-math.inf), dtype=np.float64)
    se = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return TraceResult(
        float(samples.mean()), se, len(samples), "pyhessian-hutchinson", seed, samples
    )


def pyhessian_density(
    model: nn.Module,
    loss_fn: Callable,
    batch: Any,
    steps: int = 90,
    runs: int = 1,
    seed: int = 0,
    grid: np.ndarray | int = 512,
    sigma: float | None = None,
    params: Any = None,
    bn_mode: str = "eval",
) -> DensityResult:
    """PyHessian's SLQ (``density(iter=steps, n_v=runs)``) with :func:`torch_eig_shim`; the
    smoothing matches :func:`~mitools.hessian.spectral_density`. ``steps`` is capped at n."""
    steps = min(_check_count("steps", steps, 1), _n_selected(model, params))
    runs = _check_count("runs", runs, 1)
    _check_grid(grid)
    _check_sigma(sigma)
    with (
        _pyhessian_session(model, loss_fn, batch, params, bn_mode, seed) as (h, _),
        torch_eig_shim(),
    ):
        eig, w = h.density(iter=steps, n_v=int(runs))
    nodes = np.asarray(eig, dtype=np.float64)
    weights = np.asarray(w, dtype=np.float64)
    lo, hi = nodes.min(), nodes.max()
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * abs(hi), 1e-12)
    if isinstance(grid, int | np.integer):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=gaussian_density(nodes, weights, grid, sigma),
        sigma=float(sigma),
        runs=int(runs),
        steps=steps,
        seed=int(seed),
        n_matvecs=steps * int(runs),
    )
