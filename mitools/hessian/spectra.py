"""Spectral quantities of a symmetric operator given only by products ``H v``.

Works on any object with ``shape`` (n, n), ``dtype``, ``device``, ``matvec(v)`` and ``matmat(V)``
(a :class:`~mitools.hessian.HessianOperator`, or :func:`dense_operator` for a matrix).

- :func:`top_eigenvalues`: Lanczos with full reorthogonalisation (Ritz pairs of the Krylov
  tridiagonal ``T``), or deflated power iteration on a shifted operator.
- :func:`trace`: Hutchinson ``tr H ~ (1/m) sum z_i^T H z_i`` with Rademacher ``z_i``, or Hutch++
  (Meyer, Musco, Musco, Woodruff 2021): exact trace on a sketched top subspace plus Hutchinson on
  the deflated remainder.
- :func:`spectral_density`: stochastic Lanczos quadrature (Ubaru, Chen, Saad 2017; Ghorbani et al.
  2019): the spectral measure ``mu = (1/n) sum_i delta(lambda_i)`` is estimated per run by the
  Gauss quadrature of ``v^T f(H) v`` (``v`` normalised Rademacher): nodes = eigenvalues of ``T``,
  weights = squared first components of its eigenvectors. ``sum_j w_j theta_j^p = v^T H^p v``
  exactly for ``p <= 2 steps - 1``, an unbiased estimate of ``tr(H^p) / n``.

All random draws come from ``torch.Generator(seed)`` on the CPU (device-independent results).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "top_eigenvalues",
    "trace",
    "spectral_density",
    "dense_operator",
    "gaussian_density",
]

_WHICH = ("largest", "smallest", "both")


class LinearOperator(Protocol):
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...

    def matmat(self, V: Tensor) -> Tensor: ...


class _Dense:
    def __init__(self, A: Tensor) -> None:
        self.A = A
        self.shape = tuple(A.shape)
        self.dtype = A.dtype
        self.device = A.device
        self.n_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.n_matvecs += 1
        return self.A @ v

    def matmat(self, V: Tensor) -> Tensor:
        self.n_matvecs += V.shape[1]
        return self.A @ V


def dense_operator(A: Tensor | np.ndarray, *, rtol: float | None = None) -> LinearOperator:
    """Wrap a symmetric matrix as an operator (reference computations and tests).

    Every routine here assumes ``A = A^T`` (a Hessian is symmetric); on a non-symmetric matrix
    Lanczos returns numbers that are no eigenvalues. ValueError unless ``A`` is square, finite
    and ``||A - A^T||_F <= rtol * ||A||_F``; ``rtol`` defaults to ``sqrt(eps)`` of ``A``'s
    floating dtype (1.5e-8 for float64, 3.5e-4 for float32; float64's for integer input), which
    accepts the rounding-level asymmetry of a Hessian assembled from products ``H e_i``.
    """
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
    Ad = A.detach().to(torch.float64)
    if not bool(torch.isfinite(Ad).all()):
        raise ValueError(f"matrix has {int((~torch.isfinite(Ad)).sum())} non-finite entries")
    if rtol is None:
        rtol = math.sqrt(torch.finfo(A.dtype if A.is_floating_point() else torch.float64).eps)
    elif not (rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be None or a finite number >= 0, got {rtol!r}")
    asym = float(torch.linalg.matrix_norm(Ad - Ad.T))
    norm = float(torch.linalg.matrix_norm(Ad))
    if asym > rtol * norm:
        raise ValueError(
            f"matrix is not symmetric: ||A - A^T||_F / ||A||_F = {asym / norm:.3g} > rtol = "
            f"{rtol:.3g} (a Hessian is symmetric; pass (A + A.T) / 2 if the asymmetry is rounding)"
        )
    return _Dense(A)


@dataclass
class EigenResult:
    """Extreme eigenpairs.

    ``eigenvalues``: ``which="largest"``: k largest, descending; ``"smallest"``: k smallest
    (most negative first), ascending; ``"both"``: the k largest (descending) then the k smallest
    (ascending). ``eigenvectors``: (n, len) tensor of unit columns, or None. ``residual_norms``:
    true ``||H y - theta y||`` per pair (extra products, counted in ``n_matvecs``).
    ``iterations``: Lanczos steps (or power iterations summed over pairs). ``converged``: every
    residual estimate met ``tol * max|theta|``.
    """

    eigenvalues: np.ndarray
    eigenvectors: Tensor | None
    residual_norms: np.ndarray
    iterations: int
    n_matvecs: int
    converged: bool
    method: str
    which: str
    k: int
    tol: float
    max_iter: int
    seed: int

    @property
    def largest(self) -> np.ndarray:
        if self.which == "smallest":
            raise ValueError("result holds the smallest eigenvalues only")
        return self.eigenvalues[: self.k]

    @property
    def smallest(self) -> np.ndarray:
        if self.which == "largest":
            raise ValueError("result holds the largest eigenvalues only")
        return (
            self.eigenvalues[-self.k :] if self.which == "smallest" else self.eigenvalues[self.k :]
        )


@dataclass
class TraceResult:
    """``estimate`` of ``tr H`` with its ``std_error`` (sample std of the per-probe terms over
    sqrt(count); for Hutch++ the std error of the stochastic remainder given the sketch, the
    deterministic part ``tr(Q^T H Q)`` adding none). ``n_probes``: Hessian-vector products used."""

    estimate: float
    std_error: float
    n_probes: int
    method: str
    seed: int
    samples: np.ndarray = field(repr=False)
    exact_part: float = 0.0


@dataclass
class DensityResult:
    """SLQ output: ``nodes``/``weights`` (runs, steps) (runs that broke down early are padded with
    zero-weight nodes), ``grid``/``density``: the Gaussian-smoothed spectral density
    ``(1/runs) sum_r sum_j w_rj N(x; theta_rj, sigma^2)`` (integrates to 1)."""

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    runs: int
    steps: int
    seed: int
    n_matvecs: int

    def moment_samples(self, p: int) -> np.ndarray:
        """Per-run estimates ``sum_j w_j theta_j^p`` of ``tr(H^p)/n`` (exact for p <= 2 steps-1)."""
        return (self.weights * self.nodes.astype(np.float64) ** p).sum(1)

    def moment(self, p: int) -> float:
        return float(self.moment_samples(p).mean())


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _randn(n: int, m: int, g: torch.Generator, op: LinearOperator) -> Tensor:
    return torch.randn(n, m, generator=g, dtype=torch.float64).to(op.device, op.dtype)


def _rademacher(n: int, m: int, g: torch.Generator, op: LinearOperator) -> Tensor:
    z = torch.randint(0, 2, (n, m), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1
    return z.to(op.device, op.dtype)


def _reorth(w: Tensor, V: Tensor) -> Tensor:
    """Full reorthogonalisation against the columns of V (classical Gram-Schmidt, twice)."""
    if V.shape[1] == 0:
        return w
    for _ in range(2):
        w = w - V @ (V.T @ w)
    return w


def _check_op(op: Any) -> int:
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"operator must have a square shape (n, n), got {shape}")
    return int(shape[0])


def _lanczos_run(
    op: LinearOperator,
    v0: Tensor,
    steps: int,
    g: torch.Generator | None,
    stop: Any = None,
) -> tuple[Tensor, np.ndarray, np.ndarray, bool]:
    """Lanczos with full reorthogonalisation from unit ``v0``.

    Returns V (n, j), alpha (j,), beta (j,) (``beta[i]`` couples steps i and i+1; the last is the
    residual norm), and whether an invariant subspace was hit. On breakdown with a generator ``g``
    the run restarts from a random vector orthogonal to V (block-diagonal T); without ``g`` it
    stops (SLQ: the quadrature is then exact). ``stop(alpha, beta)`` may end the run early.
    """
    n = v0.shape[0]
    V = torch.zeros(n, steps, dtype=op.dtype, device=op.device)
    alpha = np.zeros(steps)
    beta = np.zeros(steps)
    v = v0
    eps = torch.finfo(op.dtype).eps
    scale = 0.0
    broke = False
    j = 0
    while j < steps:
        V[:, j] = v
        w = op.matvec(v)
        a = float(w @ v)
        alpha[j] = a
        w = w - a * v
        if j > 0:
            w = w - beta[j - 1] * V[:, j - 1]
        w = _reorth(w, V[:, : j + 1])
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), b)
        j += 1
        if j == steps or j == n:
            beta[j - 1] = b
            break
        if b <= n * eps * max(scale, 1e-300):
            broke = True
            beta[j - 1] = 0.0
            if g is None:
                break
            w = _reorth(_randn(n, 1, g, op)[:, 0], V[:, :j])
            v = w / torch.linalg.vector_norm(w)
        else:
            beta[j - 1] = b
            v = w / b
        if stop is not None and stop(alpha[:j], beta[:j]):
            break
    return V[:, :j], alpha[:j], beta[:j], broke


def _tridiag_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal T (diag alpha, off-diag beta[:-1]), ascending."""
    T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    return np.linalg.eigh(T)


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    m = len(theta)
    k = min(k, m)
    top = np.arange(m - 1, m - 1 - k, -1)
    bottom = np.arange(k)
    if which == "largest":
        return top
    if which == "smallest":
        return bottom
    return np.concatenate([top, bottom])


def _is_int(value: Any) -> bool:
    # bool is an int subclass but never a meaningful count; floats (even 2.0) are rejected so a
    # computed non-integral count fails loudly instead of being truncated
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` and the allowed range ``>= minimum``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_k(k: Any, n: int) -> int:
    """Number of wanted eigenpairs: an int in ``[1, n]``."""
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be an int in [1, n={n}], got {k!r}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of parameters n={n} (need 1 <= k <= n)")
    return int(k)


def _check_sigma(sigma: Any) -> None:
    """User-given smoothing width: None (automatic) or positive and finite; checked before any
    Hessian-vector product is spent."""
    real = isinstance(sigma, int | float | np.integer | np.floating) and not isinstance(sigma, bool)
    if sigma is not None and not (real and 0 < sigma < math.inf):
        raise ValueError(f"sigma must be None or a positive finite number, got {sigma!r}")


def _check_grid(grid: Any) -> None:
    """Density grid: a point count >= 1, or a non-empty 1-D array of finite points."""
    if _is_int(grid):
        if grid < 1:
            raise ValueError(f"grid must be a point count >= 1 or an array of points, got {grid}")
        return
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(
            "grid must be a point count >= 1 or a non-empty 1-D array of finite points, "
            f"got shape {arr.shape} with {int(np.sum(~np.isfinite(arr)))} non-finite values"
        )


def _validate(op: Any, k: int, which: str, tol: float, max_iter: int) -> int:
    n = _check_op(op)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    _check_k(k, n)
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be positive and finite, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    return n


def _residuals(op: LinearOperator, Y: Tensor, theta: np.ndarray) -> np.ndarray:
    HY = op.matmat(Y)
    th = torch.as_tensor(theta, dtype=Y.dtype, device=Y.device)
    return torch.linalg.vector_norm(HY - Y * th, dim=0).cpu().double().numpy()


def top_eigenvalues(
    op: LinearOperator,
    k: int = 1,
    method: str = "lanczos",
    which: str = "largest",
    tol: float = 1e-6,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = True,
) -> EigenResult:
    """Extreme eigenvalues of the symmetric operator ``op``.

    ``method="lanczos"``: one Krylov run with full reorthogonalisation; stops when every wanted
    Ritz pair has residual estimate ``|beta_j s_ji| <= tol * max|theta|`` or after ``max_iter``
    steps (default ``min(n, max(200, 4k))``; ``max_iter >= n`` gives the exact spectrum in exact
    arithmetic). ``method="power"``: deflated power iteration on ``H + rho I`` (largest) or
    ``rho I - H`` (smallest), ``rho`` the spectral radius from a first power run, so the algebraic
    order is respected even with negative eigenvalues; each pair stops when
    ``||H v - lambda v|| <= tol * rho`` or after ``max_iter`` iterations (default 1000).
    Eigenvalues are Rayleigh quotients; residuals are true residual norms.
    """
    if method == "lanczos":
        n = _validate(op, k, which, tol, max_iter or 1)
        max_iter = min(n, max(200, 4 * k)) if max_iter is None else min(int(max_iter), n)
        if max_iter < k:
            raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
        return _lanczos_eig(op, k, which, tol, max_iter, seed, return_eigenvectors)
    if method == "power":
        max_iter = 1000 if max_iter is None else int(max_iter)
        _validate(op, k, which, tol, max_iter)
        return _power_eig(op, k, which, tol, max_iter, seed, return_eigenvectors)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")


def _lanczos_eig(op, k, which, tol, max_iter, seed, return_vecs) -> EigenResult:
    n = op.shape[0]
    g = _rng(seed)
    v0 = _randn(n, 1, g, op)[:, 0]
    v0 = v0 / torch.linalg.vector_norm(v0)
    start = getattr(op, "n_matvecs", 0)

    def stop(alpha: np.ndarray, beta: np.ndarray) -> bool:
        if len(alpha) < k:
            return False
        theta, S = _tridiag_eigh(alpha, beta)
        idx = _wanted(theta, k, which)
        est = np.abs(beta[-1] * S[-1, idx])
        return bool(np.all(est <= tol * np.max(np.abs(theta))))

    V, alpha, beta, _ = _lanczos_run(op, v0, max_iter, g, stop)
    theta, S = _tridiag_eigh(alpha, beta)
    idx = _wanted(theta, k, which)
    est = np.abs(beta[-1] * S[-1, idx])
    exact = len(alpha) == n
    converged = bool(exact or np.all(est <= tol * np.max(np.abs(theta))))
    Y = V @ torch.as_tensor(S[:, idx], dtype=op.dtype, device=op.device)
    res = _residuals(op, Y, theta[idx])
    return EigenResult(
        eigenvalues=theta[idx].copy(),
        eigenvectors=Y if return_vecs else None,
        residual_norms=res,
        iterations=len(alpha),
        n_matvecs=getattr(op, "n_matvecs", 0) - start,
        converged=converged,
        method="lanczos",
        which=which,
        k=k,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
    )


def _power_pairs(op, k, sign, shift, tol, rho, max_iter, g, found):
    """k pairs of ``sign*H + shift*I`` by power iteration, deflated against ``found``."""
    n = op.shape[0]
    lams, vecs, res, iters, ok = [], [], [], 0, True
    for _ in range(k):
        basis = torch.stack(found + vecs, 1) if (found or vecs) else op_empty(op, n)
        v = _reorth(_randn(n, 1, g, op)[:, 0], basis)
        v = v / torch.linalg.vector_norm(v)
        lam, r = float("nan"), float("inf")
        for _ in range(max_iter):
            w = op.matvec(v)
            iters += 1
            lam = float(w @ v)
            r = float(torch.linalg.vector_norm(w - lam * v))
            if r <= tol * (rho if rho is not None else abs(lam)):
                break
            a = _reorth(sign * w + shift * v, basis)
            nrm = torch.linalg.vector_norm(a)
            if float(nrm) == 0.0:
                break
            v = a / nrm
        ok = ok and r <= tol * (rho if rho is not None else abs(lam))
        lams.append(lam)
        vecs.append(v)
        res.append(r)
    return lams, vecs, res, iters, ok


def op_empty(op, n):
    return torch.zeros(n, 0, dtype=op.dtype, device=op.device)


def _power_eig(op, k, which, tol, max_iter, seed, return_vecs) -> EigenResult:
    g = _rng(seed)
    start = getattr(op, "n_matvecs", 0)
    # spectral radius: plain power iteration (dominant |lambda|)
    (mu,), _, _, it0, _ = _power_pairs(op, 1, 1.0, 0.0, tol, None, max_iter, g, [])
    rho = abs(mu) * (1 + 1e-3) + 1e-30
    out_l, out_v, out_r, iters, ok = [], [], [], it0, True
    if which in ("largest", "both"):
        lam, vec, res, it, good = _power_pairs(op, k, 1.0, rho, tol, rho, max_iter, g, [])
        out_l += lam
        out_v += vec
        out_r += res
        iters += it
        ok = ok and good
    if which in ("smallest", "both"):
        lam, vec, res, it, good = _power_pairs(op, k, -1.0, rho, tol, rho, max_iter, g, [])
        out_l += lam
        out_v += vec
        out_r += res
        iters += it
        ok = ok and good
    return EigenResult(
        eigenvalues=np.asarray(out_l),
        eigenvectors=torch.stack(out_v, 1) if return_vecs else None,
        residual_norms=np.asarray(out_r),
        iterations=iters,
        n_matvecs=getattr(op, "n_matvecs", 0) - start,
        converged=ok,
        method="power",
        which=which,
        k=k,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
    )


def _matmat_chunked(op: LinearOperator, Z: Tensor, block: int | None) -> Tensor:
    if block is None or block >= Z.shape[1]:
        return op.matmat(Z)
    return torch.cat([op.matmat(Z[:, i : i + block]) for i in range(0, Z.shape[1], block)], 1)


def trace(
    op: LinearOperator,
    method: str = "hutchinson",
    n_probes: int = 64,
    seed: int = 0,
    block_size: int | None = None,
) -> TraceResult:
    """Stochastic trace estimate of ``op`` with ``n_probes`` Hessian-vector products.

    ``hutchinson``: ``(1/m) sum_i z_i^T H z_i``, ``z_i`` Rademacher; std error = sample std / sqrt(m).
    ``hutch++``: ``m = 2s + r`` products with ``s = m // 3``: ``Q = orth(H S)`` for Gaussian
    ``S`` (n x s), ``tr(Q^T H Q)`` exactly (s products), Hutchinson with r Rademacher probes on
    ``(I - QQ^T) H (I - QQ^T)``. Probes go through ``op.matmat`` in blocks of ``block_size``
    (default: all at once, so a vmap'd operator evaluates them in one pass).
    """
    n = _check_op(op)
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    # hutchinson: 2 probes for a sample std; hutch++: s = m // 3 >= 1 sketch vectors
    n_probes = _check_count("n_probes", n_probes, 3 if method == "hutch++" else 2)
    if block_size is not None:
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")
    g = _rng(seed)
    if method == "hutchinson":
        Z = _rademacher(n, n_probes, g, op)
        HZ = _matmat_chunked(op, Z, block_size)
        samples = (Z * HZ).sum(0).double().cpu().numpy()
        est, se, exact = (
            float(samples.mean()),
            float(samples.std(ddof=1) / math.sqrt(n_probes)),
            0.0,
        )
    else:
        s = n_probes // 3
        r = n_probes - 2 * s
        S = _randn(n, s, g, op)
        Q, _ = torch.linalg.qr(_matmat_chunked(op, S, block_size))
        exact = float((Q * _matmat_chunked(op, Q, block_size)).sum())
        G = _rademacher(n, r, g, op)
        G = G - Q @ (Q.T @ G)
        HG = _matmat_chunked(op, G, block_size)
        HG = HG - Q @ (Q.T @ HG)
        samples = (G * HG).sum(0).double().cpu().numpy()
        se = float(samples.std(ddof=1) / math.sqrt(r)) if r > 1 else float("nan")
        est = exact + float(samples.mean())
    return TraceResult(est, se, n_probes, method, seed, samples, exact)


def gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """``(1/R) sum_r sum_j w_rj N(grid; nodes_rj, sigma^2)`` for (R, m) nodes/weights."""
    x = np.asarray(grid, dtype=np.float64)[:, None]
    th = np.asarray(nodes, dtype=np.float64).reshape(-1)[None, :]
    w = np.asarray(weights, dtype=np.float64).reshape(-1)[None, :] / nodes.shape[0]
    kern = np.exp(-0.5 * ((x - th) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (kern * w).sum(1)


def spectral_density(
    op: LinearOperator,
    runs: int = 1,
    steps: int = 90,
    seed: int = 0,
    grid: np.ndarray | int = 512,
    sigma: float | None = None,
) -> DensityResult:
    """Stochastic Lanczos quadrature: ``runs`` Lanczos runs of ``steps`` (capped at n) from
    normalised Rademacher vectors, full reorthogonalisation. ``grid``: points (array) or a count
    spanning the nodes' range padded by ``5 sigma``; ``sigma`` (default 1% of the nodes' range)
    is the Gaussian smoothing width."""
    n = _check_op(op)
    runs = _check_count("runs", runs, 1)
    steps = min(_check_count("steps", steps, 1), n)
    _check_grid(grid)
    _check_sigma(sigma)
    g = _rng(seed)
    start = getattr(op, "n_matvecs", 0)
    nodes = np.zeros((runs, steps))
    weights = np.zeros((runs, steps))
    for r in range(runs):
        z = _rademacher(n, 1, g, op)[:, 0] / math.sqrt(n)
        _, alpha, beta, _ = _lanczos_run(op, z, steps, None)
        theta, S = _tridiag_eigh(alpha, beta)
        nodes[r, : len(theta)] = theta
        weights[r, : len(theta)] = S[0] ** 2
    lo, hi = float(nodes[weights > 0].min()), float(nodes[weights > 0].max())
    if sigma is None:
        span = hi - lo
        sigma = 0.01 * span if span > 0 else max(1e-3 * abs(hi), 1e-12)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if isinstance(grid, int | np.integer):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    dens = gaussian_density(nodes, weights, grid, sigma)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=dens,
        sigma=float(sigma),
        runs=runs,
        steps=steps,
        seed=seed,
        n_matvecs=getattr(op, "n_matvecs", 0) - start,
    )
