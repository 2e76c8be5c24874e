"""Mutual-information and entropy estimators from samples (all results in nats).

- :func:`gaussian_mi`: second-order (log-det) MI of the sample covariance.
- :func:`ksg_mi`: Kraskov-Stoegbauer-Grassberger k-nearest-neighbour MI, both variants, with a fast
  KD-tree backend and a chunked torch backend (CPU or CUDA) that give bit-identical counts.
- :func:`ksg_mi_bruteforce`: O(n^2) numpy reference written directly from the paper's definitions.
- :func:`kl_entropy`: Kozachenko-Leonenko differential entropy (euclidean or max norm).

Reference: A. Kraskov, H. Stoegbauer, P. Grassberger, "Estimating mutual information",
Phys. Rev. E 69, 066138 (2004), eqs. (8), (9) (MI) and (20) (entropy).

Conventions shared by the k-NN estimators
-----------------------------------------
Distances are max-norm (``max_d |a_d - b_d|``) in the joint space Z = (X, Y) and in each marginal
space, as in the paper. Distances are computed as ``fl(|a_d - b_d|)`` then maxed, which is exact
given the rounded differences, so the KD-tree, torch and brute-force paths see identical numbers
and the comparison "d < eps" is decided identically everywhere. A point is never its own neighbour.

Ties. The paper assumes continuous densities. Repeated values make k-NN distances tie or vanish
(eps = 0, log 0). ``ties`` decides what happens when any coordinate (column) contains a repeated
value, which is the signature of discrete or quantised data:

- ``"jitter"`` (default): add seeded Gaussian noise of amplitude ``1e-10 * s_j`` to the columns
  that contain repeats only (``s_j`` is the column's standard deviation, or ``max(|value|, 1)``
  for a constant column), as Kraskov et al. recommend ("add very low-amplitude noise to break
  degeneracies"). If rows of a variable are still duplicated afterwards (massively repeated values
  can collide again on the float grid) the amplitude is multiplied by 10, up to ``1e-6 * s_j``.
  Data without repeated values are passed through untouched, so estimates on continuous data
  are deterministic and do not depend on ``seed``. :func:`break_ties` exposes this step.
- ``"raise"``: raise ``ValueError`` naming the column and its number of repeated values.

Remaining exact distance ties (e.g. integer data with no repeated values) are resolved
deterministically: the k nearest neighbours of a point are the first k points in the order
(distance, index). Only variant 2 depends on which neighbours are chosen.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

__all__ = [
    "KLResult",
    "KSGResult",
    "break_ties",
    "gaussian_mi",
    "kl_entropy",
    "kl_entropy_result",
    "ksg_mi",
    "ksg_mi_bruteforce",
    "ksg_mi_result",
]

_JITTER_START = 1e-10
_JITTER_MAX = 1e-6


# --------------------------------------------------------------------------------------------
# input checks and tie handling
# --------------------------------------------------------------------------------------------


def _as_samples(a, name: str) -> np.ndarray:
    """Return ``a`` as a float64 (n, d) array; 1-D input is one column."""
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    try:
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from err
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D (n,) or 2-D (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(np.isnan(arr).sum())} NaN and "
            f"{int(np.isinf(arr).sum())} infinite values; all samples must be finite"
        )
    return arr


def _check_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _as_samples(x, "x"), _as_samples(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got {xa.shape[0]} and {ya.shape[0]}"
        )
    return xa, ya


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n <= k:
        raise ValueError(f"need more samples than neighbours: n = {n} <= k = {k}")
    return int(k)


def _repeats_per_column(a: np.ndarray) -> np.ndarray:
    """Number of repeated values (n - number of distinct values) in each column."""
    s = np.sort(a, axis=0)
    return (s[1:] == s[:-1]).sum(axis=0)


def _has_duplicate_rows(a: np.ndarray) -> bool:
    return np.unique(a, axis=0).shape[0] < a.shape[0]


def break_ties(
    *arrays: np.ndarray, ties: str = "jitter", seed=0, names: tuple[str, ...] | None = None
) -> tuple[np.ndarray, ...]:
    """Apply the tie policy of the k-NN estimators to (n, d_i) float arrays (see module doc).

    Columns without repeated values are returned unchanged (bit for bit). With ``ties="jitter"``
    the noise for all arrays comes from one ``np.random.default_rng(seed)`` stream, drawn for the
    concatenated columns, so the same call always yields the same output.
    """
    if ties not in ("jitter", "raise"):
        raise ValueError(f"ties must be 'jitter' or 'raise', got {ties!r}")
    names = names or tuple(f"array {i}" for i in range(len(arrays)))
    repeats = [_repeats_per_column(a) for a in arrays]
    if not any(r.any() for r in repeats):
        return arrays
    if ties == "raise":
        parts = [
            f"{nm} column {j}: {int(c)} repeated values"
            for nm, r in zip(names, repeats, strict=True)
            for j, c in enumerate(r)
            if c
        ]
        raise ValueError(
            "duplicate values found (" + "; ".join(parts) + "); k-NN estimators need continuous"
            " data without ties: pass ties='jitter' or de-duplicate"
        )
    rng = np.random.default_rng(seed)
    sizes = [a.shape[1] for a in arrays]
    z = np.hstack(arrays)
    mask = np.concatenate(repeats) > 0
    cols = z[:, mask]
    scale = cols.std(axis=0)
    const = scale == 0
    scale[const] = np.maximum(np.abs(cols[0, const]), 1.0)
    noise = rng.standard_normal(cols.shape)
    amplitude = _JITTER_START
    while True:
        out = z.copy()
        out[:, mask] = cols + amplitude * scale * noise
        split = np.split(out, np.cumsum(sizes)[:-1], axis=1)
        if not any(_has_duplicate_rows(a) for a in split):
            return tuple(np.ascontiguousarray(a) for a in split)
        amplitude *= 10
        if amplitude > _JITTER_MAX * (1 + 1e-9):
            raise ValueError(
                "jitter up to 1e-6 of the column scale did not break the duplicate rows; the data"
                " are too coarsely discretised for k-NN estimators"
            )


# --------------------------------------------------------------------------------------------
# Gaussian (second-order) MI
# --------------------------------------------------------------------------------------------


def _logdet_spd(c: np.ndarray, what: str) -> float:
    sign, logdet = np.linalg.slogdet(c)
    if sign <= 0 or not np.isfinite(logdet):
        raise ValueError(
            f"the {what} covariance is singular or not positive definite (sign {sign:+.0f}, "
            f"log det {logdet}); the Gaussian MI is infinite or undefined: pass ridge > 0"
        )
    return float(logdet)


def gaussian_mi(x, y, ridge: float = 0.0) -> float:
    """Second-order (Gaussian) MI in nats: 1/2 [log det Cxx + log det Cyy - log det C].

    C is the sample covariance of Z = (X, Y) with centring and the unbiased 1/(n-1) normalisation
    (``np.cov``); Cxx, Cyy are its diagonal blocks. Without ridge the normalisation cancels. With
    ``ridge > 0`` the covariance used is ``C + ridge * I`` (so its blocks are ``Cxx + ridge * I``
    and ``Cyy + ridge * I``), with C normalised by n - 1. This is the exact MI of a Gaussian with
    that covariance. x: (n,) or (n, dx); y: (n,) or (n, dy); n >= 2.
    """
    xa, ya = _check_pair(x, y)
    n = xa.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got n = {n}")
    ridge = float(ridge)
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    dx = xa.shape[1]
    c = np.cov(np.hstack([xa, ya]), rowvar=False, ddof=1).reshape(dx + ya.shape[1], -1)
    c = c + ridge * np.eye(c.shape[0])
    return 0.5 * (
        _logdet_spd(c[:dx, :dx], "x") + _logdet_spd(c[dx:, dx:], "y") - _logdet_spd(c, "joint")
    )


# --------------------------------------------------------------------------------------------
# KSG: shared formula
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KSGResult:
    """KSG estimate and its ingredients.

    ``nx``, ``ny``: marginal neighbour counts (self excluded) as defined for the variant;
    ``eps``: the joint max-norm distance to the k-th neighbour (the paper's eps(i)/2);
    ``eps_x``, ``eps_y``: the marginal extents of the k neighbours (variant 2; None for variant 1);
    ``per_point``: the per-point terms whose mean is ``mi``;
    ``se``: ``std(per_point) / sqrt(n)``, a rough standard error that ignores the dependence
    between points' terms (use several independent samples for a real error bar).
    """

    mi: float
    k: int
    n: int
    variant: int
    nx: np.ndarray
    ny: np.ndarray
    eps: np.ndarray
    eps_x: np.ndarray | None
    eps_y: np.ndarray | None
    per_point: np.ndarray
    se: float


def _ksg_result(k, variant, nx, ny, eps, eps_x, eps_y) -> KSGResult:
    n = nx.shape[0]
    if variant == 1:  # Kraskov et al. eq. (8)
        per_point = digamma(k) + digamma(n) - digamma(nx + 1.0) - digamma(ny + 1.0)
    else:  # eq. (9)
        per_point = digamma(k) - 1.0 / k + digamma(n) - digamma(nx * 1.0) - digamma(ny * 1.0)
    mi = float(per_point.mean())
    se = float(per_point.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return KSGResult(mi, k, n, variant, nx, ny, eps, eps_x, eps_y, per_point, se)


def _check_ksg_args(x, y, k, variant, ties, seed):
    xa, ya = _check_pair(x, y)
    k = _check_k(k, xa.shape[0])
    if variant not in (1, 2):
        raise ValueError(f"variant must be 1 or 2, got {variant!r}")
    xa, ya = break_ties(xa, ya, ties=ties, seed=seed, names=("x", "y"))
    return xa, ya, k


# --------------------------------------------------------------------------------------------
# KSG: brute force reference
# --------------------------------------------------------------------------------------------


def _ksg_bruteforce_parts(xa: np.ndarray, ya: np.ndarray, k: int, variant: int):
    """Per-point counts straight from the paper, one row of distances at a time."""
    n = xa.shape[0]
    nx = np.empty(n, dtype=np.int64)
    ny = np.empty(n, dtype=np.int64)
    eps = np.empty(n)
    eps_x = np.empty(n)
    eps_y = np.empty(n)
    others = np.ones(n, dtype=bool)
    for i in range(n):
        dxi = np.abs(xa - xa[i]).max(axis=1)  # ||x_i - x_j|| in max norm
        dyi = np.abs(ya - ya[i]).max(axis=1)
        dzi = np.maximum(dxi, dyi)  # ||z_i - z_j|| = max(||x_i - x_j||, ||y_i - y_j||)
        others[i] = False
        j = np.flatnonzero(others)
        order = j[np.argsort(dzi[j], kind="stable")]  # ties: lower index first
        knn = order[:k]
        eps[i] = dzi[knn[-1]]
        if variant == 1:
            nx[i] = np.count_nonzero(dxi[j] < eps[i])
            ny[i] = np.count_nonzero(dyi[j] < eps[i])
        else:
            eps_x[i] = dxi[knn].max()
            eps_y[i] = dyi[knn].max()
            nx[i] = np.count_nonzero(dxi[j] <= eps_x[i])
            ny[i] = np.count_nonzero(dyi[j] <= eps_y[i])
        others[i] = True
    if variant == 1:
        return nx, ny, eps, None, None
    return nx, ny, eps, eps_x, eps_y


def ksg_mi_bruteforce(x, y, k: int = 5, variant: int = 1, *, ties: str = "jitter", seed=0) -> float:
    """O(n^2) reference KSG estimate (Kraskov et al. 2004, eqs. 8-9) in plain numpy.

    Same inputs, tie policy and neighbour order as :func:`ksg_mi`; computes one row of max-norm
    distances per point, sorts it and counts, with no spatial index. The final formula is
    evaluated here independently (explicit loop sum) of the fast path.
    """
    xa, ya, k = _check_ksg_args(x, y, k, variant, ties, seed)
    n = xa.shape[0]
    nx, ny, *_ = _ksg_bruteforce_parts(xa, ya, k, variant)
    total = 0.0
    for a, b in zip(nx.tolist(), ny.tolist(), strict=True):
        if variant == 1:
            total += digamma(a + 1) + digamma(b + 1)
        else:
            total += digamma(a) + digamma(b)
    const = digamma(k) + digamma(n) - (1.0 / k if variant == 2 else 0.0)
    return float(const - total / n)


# --------------------------------------------------------------------------------------------
# KSG: KD-tree backend
# --------------------------------------------------------------------------------------------


def _n_workers(workers: int) -> int:
    if workers is None or workers == -1:
        return os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be -1 or >= 1, got {workers}")
    return int(workers)


def _count_1d(v: np.ndarray, r: np.ndarray, strict: bool) -> np.ndarray:
    """#{j != i : |v_j - v_i| < r_i} (or <=) exactly, by sorting and binary search.

    Binary search on v_i +- r_i is only approximately the predicate fl(|v_j - v_i|) < r_i, so the
    bounds are then moved one data value at a time until the predicate itself decides them. The
    predicate is monotone on each side of v_i (rounding is monotone), so the points inside form
    one contiguous run [lo, hi) of the sorted values, which always contains v_i itself.
    """
    s = np.sort(v)
    n = s.shape[0]

    def inside(idx, rows):
        d = np.abs(s[idx] - v[rows])
        return d < r[rows] if strict else d <= r[rows]

    hi = np.searchsorted(s, v + r, side="left")
    while True:
        rows = np.flatnonzero(hi < n)
        rows = rows[inside(hi[rows], rows)]
        if rows.size == 0:
            break
        hi[rows] += 1
    while True:  # stops at the latest at v_i itself, which is inside
        rows = np.flatnonzero(~inside(hi - 1, np.arange(n)))
        if rows.size == 0:
            break
        hi[rows] -= 1
    lo = np.searchsorted(s, v - r, side="right")
    while True:
        rows = np.flatnonzero(lo > 0)
        rows = rows[inside(lo[rows] - 1, rows)]
        if rows.size == 0:
            break
        lo[rows] -= 1
    while True:
        rows = np.flatnonzero(~inside(lo, np.arange(n)))
        if rows.size == 0:
            break
        lo[rows] += 1
    return hi - lo - 1


def _kernels():
    """The optional numba kernels (:mod:`mitools.mi._ksg_count`), or None where numba is missing
    or disabled (environment variable ``MITOOLS_NO_NUMBA=1``). Imported lazily: numba is slow
    to import."""
    from mitools.mi import _ksg_count

    return _ksg_count if _ksg_count.AVAILABLE else None


def _count_within(a: np.ndarray, r: np.ndarray, strict: bool, workers: int) -> np.ndarray:
    """#{j != i : ||a_j - a_i||_max < r_i} (or <=), exact."""
    if a.shape[1] == 1:
        return _count_1d(a[:, 0], r, strict)
    kernels = _kernels()
    if kernels is not None:
        return kernels.count_within(a, r, strict, workers)
    return _count_within_sklearn(a, r, strict, workers)


def _count_within_sklearn(a: np.ndarray, r: np.ndarray, strict: bool, workers: int) -> np.ndarray:
    """Fallback of :func:`_count_within` without numba (about 5x slower at n = 1e5, 5-D)."""
    # scikit-learn's KD-tree adds whole nodes that lie inside the ball (count_only) and is
    # about 2x faster here than cKDTree.query_ball_point(return_length=True). Its Chebyshev
    # distance is max |a - b| and its test is "<= r": for "< r" use the next float below r.
    from sklearn.neighbors import KDTree

    radius = np.nextafter(r, 0.0) if strict else r
    tree = KDTree(a, leaf_size=64, metric="chebyshev")
    # query in the tree's storage order: neighbouring queries touch the same nodes
    order = tree.get_arrays()[1]
    chunks = np.array_split(order, max(1, 4 * workers))

    def count(ix):
        return tree.query_radius(a[ix], radius[ix], count_only=True)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(count, chunks))
    else:
        parts = [count(ix) for ix in chunks]
    out = np.empty(a.shape[0], dtype=np.int64)
    out[order] = np.concatenate(parts)
    return out - 1  # self is at distance 0


def _lexicographic_knn(z: np.ndarray, i: int, cand: np.ndarray, k: int) -> np.ndarray:
    """The k nearest of ``cand`` to z[i] (self excluded) in the order (distance, index)."""
    cand = np.sort(cand[cand != i])
    d = np.abs(z[cand] - z[i]).max(axis=1)
    return cand[np.argsort(d, kind="stable")[:k]]


def _joint_knn(z: np.ndarray, k: int, workers: int, neighbours: bool):
    """Max-norm distance eps_i from z_i to its k-th neighbour (self excluded) and, if
    ``neighbours``, the k neighbours (n, k) in the order (distance, index), else None.
    numba KD-tree (:mod:`mitools.mi._ksg_count`) where available, else scipy's cKDTree."""
    kernels = _kernels()
    if kernels is not None:
        dist, idx = kernels.knn(z, k, workers)
        return dist[:, k - 1], idx
    n = z.shape[0]
    tree = cKDTree(z, leafsize=16)
    kq = min(k + 2, n) if neighbours else k + 1
    dist, idx = tree.query(z, k=kq, p=np.inf, workers=workers)
    # no duplicate rows (break_ties), so column 0 is the point itself at distance 0
    eps = dist[:, k]
    if not neighbours:
        return eps, None
    knn = idx[:, 1 : k + 1].copy()
    if kq > k + 1:
        tied = np.flatnonzero(dist[:, k + 1] == dist[:, k])
        for i in tied:  # the k-th distance is shared with a point beyond k: apply the tie rule
            cand = np.asarray(tree.query_ball_point(z[i], eps[i], p=np.inf), dtype=np.intp)
            knn[i] = _lexicographic_knn(z, i, cand, k)
    return eps, knn


def _ksg_kdtree_parts(xa, ya, k, variant, workers):
    w = _n_workers(workers)
    z = np.hstack([xa, ya])
    eps, knn = _joint_knn(z, k, w, neighbours=variant == 2)
    if variant == 1:
        nx = _count_within(xa, eps, True, w)
        ny = _count_within(ya, eps, True, w)
        return nx, ny, eps, None, None
    eps_x = np.abs(xa[knn] - xa[:, None, :]).max(axis=(1, 2))
    eps_y = np.abs(ya[knn] - ya[:, None, :]).max(axis=(1, 2))
    nx = _count_within(xa, eps_x, False, w)
    ny = _count_within(ya, eps_y, False, w)
    return nx, ny, eps, eps_x, eps_y


# --------------------------------------------------------------------------------------------
# KSG: torch backend
# --------------------------------------------------------------------------------------------


def _ksg_torch_parts(xa, ya, k, variant, device, chunk_bytes):
    import torch

    dev = torch.device(device if device is not None else "cpu")
    n = xa.shape[0]
    xt = torch.as_tensor(xa, dtype=torch.float64, device=dev)
    yt = torch.as_tensor(ya, dtype=torch.float64, device=dev)
    # about five (rows, n) float64 buffers live at once
    rows = int(max(1, min(n, chunk_bytes // (5 * 8 * n))))
    nx = torch.empty(n, dtype=torch.int64, device=dev)
    ny = torch.empty(n, dtype=torch.int64, device=dev)
    eps = torch.empty(n, dtype=torch.float64, device=dev)
    eps_x = torch.empty(n, dtype=torch.float64, device=dev)
    eps_y = torch.empty(n, dtype=torch.float64, device=dev)

    def maxnorm(block, full):
        d = (block[:, :1] - full[:, 0][None, :]).abs()
        for c in range(1, full.shape[1]):
            torch.maximum(d, (block[:, c : c + 1] - full[:, c][None, :]).abs(), out=d)
        return d

    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        r = torch.arange(stop - start, device=dev)
        dx = maxnorm(xt[start:stop], xt)
        dy = maxnorm(yt[start:stop], yt)
        dz = torch.maximum(dx, dy)
        # a point is not its own neighbour
        dx[r, r + start] = inf
        dy[r, r + start] = inf
        dz[r, r + start] = inf
        if variant == 1:
            e = torch.kthvalue(dz, k, dim=1).values
            eps[start:stop] = e
            nx[start:stop] = (dx < e[:, None]).sum(1)
            ny[start:stop] = (dy < e[:, None]).sum(1)
            continue
        val, knn = torch.topk(dz, k, dim=1, largest=False, sorted=True)
        e = val[:, -1]
        tied = torch.nonzero((dz <= e[:, None]).sum(1) > k).flatten()
        if tied.numel():  # tie rule: order (distance, index); torch's stable sort keeps index order
            knn[tied] = torch.sort(dz[tied], dim=1, stable=True).indices[:, :k]
        ex = dx.gather(1, knn).amax(1)
        ey = dy.gather(1, knn).amax(1)
        eps[start:stop] = e
        eps_x[start:stop] = ex
        eps_y[start:stop] = ey
        nx[start:stop] = (dx <= ex[:, None]).sum(1)
        ny[start:stop] = (dy <= ey[:, None]).sum(1)

    def host(t):
        return t.cpu().numpy()

    if variant == 1:
        return host(nx), host(ny), host(eps), None, None
    return host(nx), host(ny), host(eps), host(eps_x), host(eps_y)


# --------------------------------------------------------------------------------------------
# KSG: public API
# --------------------------------------------------------------------------------------------


def ksg_mi_result(
    x,
    y,
    k: int = 5,
    variant: int = 1,
    *,
    backend: str = "kdtree",
    ties: str = "jitter",
    seed=0,
    workers: int = -1,
    device: str | None = None,
    chunk_bytes: int = 1 << 28,
) -> KSGResult:
    """KSG estimate with per-point counts and contributions; see :func:`ksg_mi`."""
    if backend not in ("kdtree", "torch"):
        raise ValueError(f"backend must be 'kdtree' or 'torch', got {backend!r}")
    xa, ya, k = _check_ksg_args(x, y, k, variant, ties, seed)
    if backend == "kdtree":
        parts = _ksg_kdtree_parts(xa, ya, k, variant, workers)
    else:
        parts = _ksg_torch_parts(xa, ya, k, variant, device, chunk_bytes)
    return _ksg_result(k, variant, *parts)


def ksg_mi(
    x,
    y,
    k: int = 5,
    variant: int = 1,
    *,
    backend: str = "kdtree",
    ties: str = "jitter",
    seed=0,
    workers: int = -1,
    device: str | None = None,
    chunk_bytes: int = 1 << 28,
) -> float:
    """Kraskov-Stoegbauer-Grassberger MI estimate in nats (Kraskov et al., PRE 69, 066138, 2004).

    Max norm in the joint space Z = (X, Y) and in both marginals. For each point i let eps_i be the
    max-norm distance from z_i to its k-th nearest neighbour in Z (the paper's eps(i)/2).

    - variant 1 (eq. 8): I = psi(k) + psi(n) - < psi(nx_i + 1) + psi(ny_i + 1) >, where
      nx_i = #{j != i : ||x_j - x_i|| < eps_i} (strict), ny_i likewise.
    - variant 2 (eq. 9): I = psi(k) - 1/k + psi(n) - < psi(nx_i) + psi(ny_i) >, where
      eps_x,i = max over the k nearest neighbours j of ||x_j - x_i|| (the paper's eps_x(i)/2) and
      nx_i = #{j != i : ||x_j - x_i|| <= eps_x,i}, ny_i likewise.

    x: (n,) or (n, dx); y: (n,) or (n, dy). ``ties``/``seed``: tie policy (module doc).
    ``backend="kdtree"``: KD-tree k-NN query in Z, then exact marginal counts (sort and binary
    search for 1-D marginals, KD-tree count queries otherwise), ``workers`` threads (-1: all
    cores). The trees are numba kernels (:mod:`mitools.mi._ksg_count`) when numba is installed
    (5x less CPU time at n = 1e5, 5+5 dims), else scipy's cKDTree and scikit-learn's KDTree;
    ``MITOOLS_NO_NUMBA=1`` in the environment (read at first use) forces the latter.
    ``backend="torch"``: chunked dense max-norm distances on ``device`` (CPU or CUDA) in float64,
    memory about ``chunk_bytes``. All paths give the same counts as :func:`ksg_mi_bruteforce`,
    hence the same estimate. The estimator is not scale invariant:
    standardise columns first if their units differ.
    """
    return ksg_mi_result(
        x,
        y,
        k,
        variant,
        backend=backend,
        ties=ties,
        seed=seed,
        workers=workers,
        device=device,
        chunk_bytes=chunk_bytes,
    ).mi


# --------------------------------------------------------------------------------------------
# Kozachenko-Leonenko entropy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KLResult:
    """KL entropy estimate: ``h`` (nats), the k-NN radii ``eps``, ``log_unit_ball`` (log V_d) and
    ``se`` = std(d log eps_i) / sqrt(n), a rough standard error ignoring dependence."""

    h: float
    k: int
    n: int
    d: int
    norm: str
    eps: np.ndarray
    log_unit_ball: float
    se: float


def _log_unit_ball(d: int, norm: str) -> float:
    if norm == "max":
        return d * np.log(2.0)  # the cube [-1, 1]^d
    return 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)


def kl_entropy_result(
    x, k: int = 5, *, norm: str = "euclidean", ties: str = "jitter", seed=0, workers: int = -1
) -> KLResult:
    """Kozachenko-Leonenko entropy with its ingredients; see :func:`kl_entropy`."""
    if norm not in ("euclidean", "max"):
        raise ValueError(f"norm must be 'euclidean' or 'max', got {norm!r}")
    (xa,) = break_ties(_as_samples(x, "x"), ties=ties, seed=seed, names=("x",))
    n, d = xa.shape
    k = _check_k(k, n)
    p = 2.0 if norm == "euclidean" else np.inf
    dist, _ = cKDTree(xa).query(xa, k=k + 1, p=p, workers=_n_workers(workers))
    eps = dist[:, k]
    log_v = _log_unit_ball(d, norm)
    terms = d * np.log(eps)
    h = float(digamma(n) - digamma(k) + log_v + terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n))
    return KLResult(h, k, n, d, norm, eps, float(log_v), se)


def kl_entropy(
    x, k: int = 5, *, norm: str = "euclidean", ties: str = "jitter", seed=0, workers: int = -1
) -> float:
    """Kozachenko-Leonenko differential entropy in nats (Kraskov et al. 2004, eq. 20):

        H = psi(n) - psi(k) + log V_d + (d / n) * sum_i log eps_i,

    eps_i = distance from x_i to its k-th nearest neighbour (a RADIUS, self excluded) in the
    chosen norm, and V_d = volume of the unit-RADIUS ball in that norm: pi^(d/2) / Gamma(d/2 + 1)
    (euclidean) or 2^d (max norm). The paper's form with the diameter 2 eps_i and unit-diameter
    volume c_d is identical. x: (n,) or (n, d). Ties policy as in the module doc.
    """
    return kl_entropy_result(x, k, norm=norm, ties=ties, seed=seed, workers=workers).h
