"""Collapse diagnostics from the spectrum of an embedding matrix Z (n samples x d dims).

RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank")
    With sigma_1..sigma_m (m = min(n, d)) the singular values of the UNCENTRED Z, NOT squared,

        p_k = sigma_k / sum_j sigma_j + eps,     RankMe(Z) = exp(-sum_k p_k log p_k),

    eps = 1e-7; the paper uses ~25,600 samples. A flat spectrum of rank r gives ~r.
    Libraries differ: some use squared singular values (eigenvalues of Z'Z, i.e. of the
    covariance when Z is centred; Roy & Vetterli's effective rank applies the same entropy to
    singular values), some centre Z. :func:`effective_rank` exposes both choices
    (``convention="rankme" | "squared"``, ``center``). Note that sigma^2 concentrates the
    distribution, so ``"squared"`` <= ``"rankme"`` (up to eps effects).

Normalised std (SimSiam, Chen & He 2021)
    Mean over dimensions of the per-dimension std (ddof=1, as ``torch.std``) of the L2-normalised
    rows: ~1/sqrt(d) for isotropic embeddings, 0 under complete collapse.

Spectrum
    :func:`embedding_spectrum`: singular values of Z (optionally row-L2-normalised first, then
    centred) and the eigenvalues of its covariance (Jing et al. 2022 plot these on a log scale).

Participation ratio
    ``PR = (sum_i lambda_i)^2 / sum_i lambda_i^2`` over the eigenvalues of the (centred, by
    default) covariance; r for a flat spectrum of rank r; 1 when one direction dominates.

Numerical rank
    Number of singular values of Z above ``tol`` (absolute) or ``rtol * sigma_max``.

alpha-ReQ (Agrawal et al. 2022)
    Least-squares fit of ``log lambda_i = c - alpha log i`` to the covariance eigenvalues over a
    stated 1-based index range (default: all strictly positive eigenvalues, i = 1..m); returns
    alpha, c and the R^2 of the fit on the log-log scale (:class:`AlphaReqResult`). Their
    ``reptrix`` code lets the user skip the leading eigenvalues; pass ``fit_range=(k, m)``.

Alignment and uniformity (Wang & Isola 2020), on L2-normalised rows u_i, v_i:
    ``alignment = mean_i ||u_i - v_i||_2^alpha`` (positive pairs, alpha = 2),
    ``uniformity = log mean_{i<j} exp(-t ||u_i - u_j||_2^2)`` (t = 2; all distinct pairs, as
    ``torch.pdist`` in their code). Lower is better for both. For n rows the uniformity lies in
    ``[-2t n / (n - 1), 0]``: 0 for complete collapse; the lower bound (the mean squared distance
    is ``2 + 2 (n - |sum_i u_i|^2) / (n (n - 1)) <= 2n / (n - 1)``, then Jensen) is attained
    exactly by the regular simplex (all distances equal, ``sum_i u_i = 0``; needs n <= d + 1),
    e.g. -4t for two antipodal rows, -3t for an equilateral triangle; it tends to -2t as n grows.

Streaming (:class:`CovarianceAccumulator`, alias :class:`StreamingSpectrum`)
    Accumulates n, the column sums and the Gram (d x d) of Z, and the per-dimension sums and
    squares of the L2-normalised rows, batch by batch, around a fixed shift against
    cancellation; all sums are float64. Everything above follows exactly from these: the
    eigenvalues of ``G = Z'Z`` are the squared singular values sigma_k^2 of the uncentred Z (so
    RankMe, which needs sigma_k = sqrt(eig_k(G)), and the "squared" convention are both exact in
    exact arithmetic), the centred scatter is ``C = S - s s' / n``, ``G = C + n mu mu'``, and
    the normalised std comes from the normalised sums. Both spectra come from ONE Householder
    tridiagonalisation (:func:`eigvalsh_rank_one_pair`: G is a rank-one update of C) instead of
    two dense eigendecompositions.

    Precision of the Gram products (``precision=``, default ``"auto"``): ``"float64"`` (BLAS
    dsyrk) or ``"float32"`` (ssyrk over chunks of <= 4096 rows, each chunk's Gram added to the
    float64 sum; about 2x faster); ``"auto"`` uses float32 when the embeddings are float32 (or
    narrower: what a model returns) and float64 for float64 / integer input, so float64 callers
    keep float64 numerics. Only the rounding differs from an SVD of Z: the Gram squares the
    condition number, so sigma_k^2 is resolved to ~max(n, d) * eps_64 * sigma_max^2 absolute in
    float64 (singular values below ~1e-6 sigma_max are not resolved); Gram eigenvalues under
    ``max(n, d) * eps_64 * lambda_max`` (numpy's matrix_rank rule applied to sigma^2) are set to
    exactly 0, which makes rank-deficient (collapsed) Z come out right. Float32 products move
    the eigenvalues by at most 0.31 eps_32 ||S|| (measured on flat, power-law alpha 0.5/1/2,
    rank-8 and mean >> spread spectra at 4000 x 512 and 25,600 x 2048; ||S|| the norm of the
    shifted scatter, ~ lambda_max of the centred one), so in float32 mode eigenvalues below
    ``4 eps_32 ||S||`` (~5e-7 ||S||: singular values below ~7e-4 of the centred sigma_max) are
    also set to 0. Measured against the float64 SVD of the same float32 numbers
    (tests/test_spectrum.py): RankMe within 3e-6 relative (1e-4 asserted), participation ratio
    and alpha-ReQ within 2e-7, numerical rank exact; float64 mode on float64 data: RankMe
    within 3e-9 (1e-6 asserted). Rank-deficient float32 data differ by ~3e-6 in either mode:
    the float32 rounding of the data adds singular values ~1e-8 sigma_max that the SVD sees and
    the Gram floor removes. A spectrum whose singular values between 1e-4 and ~7e-4 of
    sigma_max matter (numerical rank at the default rtol, alpha-ReQ tails beyond
    lambda_max / 2e6) needs ``precision="float64"``. :func:`collapse_report` uses the same path,
    so in-memory and streaming reports agree to rounding.

Verdict (:func:`collapse_report`, thresholds in :class:`CollapseThresholds`, all overridable)
    ``complete_collapse`` if normalised std < 0.1 / sqrt(d) (SimSiam: ~1/sqrt(d) healthy, 0
    collapsed) or RankMe < 1.5 (a single direction carries the embeddings). Otherwise
    ``dimensional_collapse`` if RankMe / m < 0.25 or numerical rank / m < 0.5 with
    m = min(n, d) (the spectrum cannot have more than m non-zero values). Otherwise ``healthy``.
    Why these numbers: a flat rank-r spectrum has RankMe ~ r, so 0.25 flags embeddings that use
    less than a quarter of the available dimensions evenly; on digits (projector, d = 64, 5 epochs
    of the trainer) pure alignment measured RankMe / d = 0.13, EMI 0.41 and MIO 0.39. Half of the
    singular values below 1e-4 sigma_max (numerical rank / m < 0.5) is a null space that none of
    the healthy digits runs showed. These cut-offs are heuristics, not results from the papers:
    tune them per architecture and layer. Backbone features after a ReLU are non-negative with a
    large mean, which dominates the uncentred RankMe (digits EMI / MIO backbones: 0.21-0.22 of
    d = 128), so judge the projector or pass other thresholds for backbones.

All functions accept numpy arrays or torch tensors (any device; computed in float64 except the
Gram products of the streamed report and of :func:`uniformity` in float32 mode, see above), check
that Z is 2-D, finite and has n >= 2 rows, and return Python floats / numpy arrays. The helpers
that take a spectrum instead (``*_from_singular_values`` / ``*_from_eigenvalues``) check that it
is finite (and, for singular values, >= 0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "AlphaReqResult",
    "CollapseReport",
    "CollapseThresholds",
    "CovarianceAccumulator",
    "Spectrum",
    "StreamingSpectrum",
    "alignment",
    "alpha_req",
    "alpha_req_from_eigenvalues",
    "report_from_accumulator",
    "collapse_report",
    "effective_rank",
    "effective_rank_from_singular_values",
    "eigvalsh_rank_one_pair",
    "embedding_spectrum",
    "normalized_std",
    "numerical_rank",
    "participation_ratio",
    "uniformity",
]

ArrayLike = np.ndarray | torch.Tensor
Precision = Literal["auto", "float32", "float64"]


def _as_float64(z: ArrayLike, name: str = "z") -> torch.Tensor:
    if isinstance(z, torch.Tensor):
        t = z.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        t = t.to(torch.float64)
    else:
        arr = np.asarray(z)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, dim), got shape {tuple(t.shape)}")
    n, d = t.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples (rows), got shape {tuple(t.shape)}")
    if d < 1:
        raise ValueError(f"{name} needs at least 1 dimension (column), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")
    return t


def _as_values(values: ArrayLike, name: str, *, nonnegative: bool = False) -> np.ndarray:
    """Flat float64 copy of a given spectrum (numpy or torch, any device); ValueError on a
    non-real dtype, NaN / inf, or (``nonnegative``) negative entries, naming ``name``."""
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise ValueError(f"{name} must be real, got dtype {values.dtype}")
        arr = values.detach().to("cpu", torch.float64).numpy().ravel()
    else:
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")
    if nonnegative and np.any(arr < 0):
        raise ValueError(
            f"{name} must be >= 0, got {int(np.sum(arr < 0))} negative values (min {arr.min():.3g})"
        )
    return arr


def _l2_normalize_rows(t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    # Zero rows stay zero (as torch.nn.functional.normalize) instead of becoming NaN.
    return t / torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_min(eps)


def effective_rank(
    z: ArrayLike,
    *,
    convention: Literal["rankme", "squared"] = "rankme",
    eps: float = 1e-7,
    center: bool = False,
) -> float:
    """RankMe effective rank ``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + eps``.

    ``convention="rankme"``: s = singular values of Z (Garrido et al. 2023, the default);
    ``"squared"``: s = squared singular values (eigenvalues of Z'Z; of the scatter matrix when
    centred). ``center=True`` subtracts the column means first (the paper does not).
    ``eps=0`` gives Roy & Vetterli's effective rank. If every singular value is zero (all-zero
    embeddings, or identical embeddings with ``center=True``) the rank is 0.
    """
    if convention not in ("rankme", "squared"):
        raise ValueError(f"convention must be 'rankme' or 'squared', got {convention!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    t = _as_float64(z)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(t)
    if convention == "squared":
        s = s * s
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s / total + eps
    # p > 0 whenever eps > 0; with eps = 0, 0 log 0 = 0.
    entropy = -torch.special.xlogy(p, p).sum()
    return float(torch.exp(entropy))


def normalized_std(z: ArrayLike, ddof: int = 1) -> float:
    """SimSiam collapse check: mean over dims of std over samples of the L2-normalised rows."""
    t = _l2_normalize_rows(_as_float64(z))
    return float(t.std(dim=0, correction=ddof).mean())


@dataclass(frozen=True)
class Spectrum:
    """Singular values of the (processed) embedding matrix and its covariance eigenvalues.

    ``singular_values``: length min(n, d), descending. ``covariance_eigenvalues``: length d,
    descending, eigenvalues of ``Z'Z / (n - 1)`` when centred (sample covariance) or ``Z'Z / n``
    (second-moment matrix) when not; entries beyond min(n, d) are exactly 0.
    """

    singular_values: np.ndarray
    covariance_eigenvalues: np.ndarray
    n_samples: int
    dim: int
    centered: bool
    normalized: bool


def embedding_spectrum(z: ArrayLike, center: bool = True, normalize: bool = False) -> Spectrum:
    """Spectrum of Z after optional row L2-normalisation (first) and column centring (second)."""
    t = _as_float64(z)
    n, d = t.shape
    if normalize:
        t = _l2_normalize_rows(t)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(t).cpu().numpy()
    eig = np.zeros(d)
    eig[: s.size] = s**2 / (n - 1 if center else n)
    return Spectrum(
        singular_values=s,
        covariance_eigenvalues=eig,
        n_samples=n,
        dim=d,
        centered=center,
        normalized=normalize,
    )


# ----------------------------------------------------------------------------- scalar summaries


def effective_rank_from_singular_values(
    singular_values: ArrayLike,
    *,
    convention: Literal["rankme", "squared"] = "rankme",
    eps: float = 1e-7,
) -> float:
    """RankMe from given singular values (same definition as :func:`effective_rank`).

    ValueError if any value is NaN / inf or negative (a singular value is >= 0; squaring under
    ``"squared"`` would otherwise hide the sign).
    """
    if convention not in ("rankme", "squared"):
        raise ValueError(f"convention must be 'rankme' or 'squared', got {convention!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    s = _as_values(singular_values, "singular_values", nonnegative=True)
    if convention == "squared":
        s = s * s
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.exp(-terms.sum()))


def _participation_ratio_from_eigenvalues(eig: np.ndarray) -> float:
    eig = np.clip(np.asarray(eig, dtype=np.float64), 0.0, None)
    sq = float(np.sum(eig * eig))
    if sq == 0.0:
        return 0.0
    return float(eig.sum() ** 2 / sq)


def participation_ratio(z: ArrayLike, *, center: bool = True) -> float:
    """``(sum lambda)^2 / sum lambda^2`` of the covariance eigenvalues (0 if all are 0).

    ``center=True``: sample covariance; ``False``: second-moment matrix ``Z'Z / n``. The ratio is
    scale-free, so the normalisation (n or n - 1) does not matter.
    """
    return _participation_ratio_from_eigenvalues(
        embedding_spectrum(z, center=center).covariance_eigenvalues
    )


def _count_above(s: np.ndarray, tol: float | None, rtol: float) -> int:
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0:
        return 0
    threshold = float(tol) if tol is not None else rtol * float(s.max())
    return int(np.sum(s > threshold))


def numerical_rank(
    z: ArrayLike, tol: float | None = None, *, rtol: float = 1e-4, center: bool = False
) -> int:
    """Number of singular values of Z above ``tol`` (absolute) or, if None, ``rtol * sigma_max``.

    The default relative tolerance 1e-4 on singular values (1e-8 on variances) sits far above
    float32 rounding of the embeddings and far below any direction a network actually uses.
    ``center=False`` (default) counts on the same uncentred Z as RankMe.
    """
    if tol is not None and tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    return _count_above(embedding_spectrum(z, center=center).singular_values, tol, rtol)


@dataclass(frozen=True)
class AlphaReqResult:
    """Power-law fit ``log lambda_i = intercept - alpha log i`` on ``fit_range`` (1-based, inclusive).

    ``r_squared``: coefficient of determination of the log-log least-squares fit (1 = exact
    power law). ``n_points``: eigenvalues used.
    """

    alpha: float
    intercept: float
    r_squared: float
    fit_range: tuple[int, int]
    n_points: int


def alpha_req_from_eigenvalues(
    eigenvalues: ArrayLike, fit_range: tuple[int, int] | None = None
) -> AlphaReqResult:
    """alpha-ReQ fit on given eigenvalues (sorted descending inside).

    ``fit_range=(lo, hi)``: 1-based inclusive indices; default (1, number of eigenvalues > 0).
    Non-positive eigenvalues inside the range are an error (log of 0): shrink the range. NaN /
    inf eigenvalues anywhere are an error (they would make the sort order meaningless).
    """
    eig = np.sort(_as_values(eigenvalues, "eigenvalues"))[::-1]
    n_pos = int(np.sum(eig > 0))
    if fit_range is None:
        fit_range = (1, n_pos)
    lo, hi = int(fit_range[0]), int(fit_range[1])
    if lo < 1 or hi > eig.size or hi - lo + 1 < 2:
        raise ValueError(
            f"fit_range must satisfy 1 <= lo < hi <= {eig.size} (number of eigenvalues), got "
            f"{fit_range} ({n_pos} positive eigenvalues)"
        )
    if hi > n_pos:
        raise ValueError(
            f"fit_range {fit_range} reaches eigenvalue {hi}, but only {n_pos} are > 0 (the "
            "spectrum is rank-limited); use hi <= " + str(n_pos)
        )
    idx = np.arange(lo, hi + 1, dtype=np.float64)
    x = np.log(idx)
    y = np.log(eig[lo - 1 : hi])
    design = np.stack([np.ones_like(x), -x], axis=1)
    (intercept, alpha), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ np.array([intercept, alpha])
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return AlphaReqResult(float(alpha), float(intercept), r2, (lo, hi), int(hi - lo + 1))


def alpha_req(
    z: ArrayLike, fit_range: tuple[int, int] | None = None, *, center: bool = True
) -> AlphaReqResult:
    """alpha-ReQ (Agrawal et al. 2022) of the covariance spectrum of Z (see module docstring)."""
    eig = embedding_spectrum(z, center=center).covariance_eigenvalues
    return alpha_req_from_eigenvalues(eig, fit_range)


def alignment(z1: ArrayLike, z2: ArrayLike, alpha: float = 2.0) -> float:
    """Wang & Isola alignment ``mean_i ||u_i - v_i||^alpha`` of L2-normalised positive pairs."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    a = _l2_normalize_rows(_as_float64(z1, "z1"))
    b = _l2_normalize_rows(_as_float64(z2, "z2"))
    if a.shape != b.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return float(torch.linalg.vector_norm(a - b, dim=1).pow(alpha).mean())


def uniformity(
    z: ArrayLike,
    t: float = 2.0,
    *,
    max_samples: int | None = 2048,
    seed: int = 0,
    precision: Precision = "float64",
) -> float:
    """Wang & Isola uniformity ``log mean_{i<j} exp(-t ||u_i - u_j||^2)`` of L2-normalised rows.

    Range ``[-2t n / (n - 1), 0]`` for the n rows used (module docstring). O(n^2 d): above
    ``max_samples`` rows a uniform random subset (``seed``) is used; None uses every row. The
    sum over pairs is shifted by the smallest distance (a log-sum-exp), so large
    t does not underflow. ``precision``: dtype of the row Gram ``u_i . u_j`` (the O(n^2 d) part;
    the rest is float64); ``"auto"`` uses float32 for float32 (or narrower) input. Float32 moves
    each ``||u_i - u_j||^2`` by ~sqrt(d) eps_32, so the uniformity by ~t sqrt(d) eps_32
    absolute (< 1e-5 for d <= 2048, t = 2).
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
    n = _rows(z)
    if max_samples is not None and n > max_samples:
        # Subsample before the float64 copy: the full matrix may be large.
        g = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(n, generator=g)[:max_samples].sort().values
        z = z[keep.to(z.device)] if isinstance(z, torch.Tensor) else np.asarray(z)[keep.numpy()]
    if _rows(z) < 2:
        raise ValueError(f"z needs at least 2 samples (rows), got shape {tuple(np.shape(z))}")
    x = _as_real_tensor(z, "z")
    work = _working_dtype(precision, x.dtype)
    u = _l2_normalize_rows(x.to(work))
    n = u.shape[0]
    gram = (u @ u.T).to(torch.float64)
    sq_norm = gram.diagonal().clone()
    d2 = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram).clamp_min_(0.0)
    d2.fill_diagonal_(math.inf)  # exp(-inf) = 0: the diagonal drops out of the sum
    # The full matrix counts each pair i < j twice, as does n (n - 1). Shifting by the smallest
    # distance keeps the largest term at exp(0) = 1, so no underflow for any t.
    shift = float(d2.min())
    total = torch.exp(-t * (d2 - shift)).sum()
    return float(-t * shift + torch.log(total) - math.log(n * (n - 1)))


# ----------------------------------------------------------------------------- streaming


# Float32 Gram rounding: the eigenvalues of the float32-accumulated scatter move by up to about
# 0.25 eps_32 ||S|| (measured, rank-8 to full-rank spectra, 4000 x 512 to 25,600 x 2048, module
# docstring); eigenvalues below this multiple of eps_32 ||S|| are treated as rounding (set to 0).
_FLOAT32_FLOOR = 4.0
# Rows per float32 syrk call: each call's Gram is added to the float64 accumulator, so rounding
# accumulates in float32 over at most this many rows.
_FLOAT32_CHUNK_ROWS = 4096


class CovarianceAccumulator:
    """Sufficient statistics of Z, batch by batch; only d x d is held (float64 sums).

    ``update(batch)`` adds rows. The sums are taken around a fixed shift c (the first batch's
    mean, rounded to the working precision; c_u for the L2-normalised rows): n, ``s = sum(z - c)``,
    ``S = sum (z - c)(z - c)'`` and the per-dimension sums / squares of ``u - c_u``. Then the
    centred scatter is ``C = S - s s' / n`` and the uncentred Gram ``Z'Z = C + n mu mu'``
    (mu = c + s / n); the shift avoids the cancellation of ``Z'Z - n mu mu'`` when the mean is
    large against the spread (constant rows give exactly 0). The spectrum, RankMe (both
    conventions), participation ratio, numerical rank, alpha-ReQ and normalised std from these
    equal the in-memory ones up to rounding (module docstring).

    ``precision``: ``"float64"`` forms each batch's ``(z - c)(z - c)'`` in float64 (BLAS dsyrk);
    ``"float32"`` in float32 (ssyrk, about 2x faster) over chunks of at most 4096 rows, each
    chunk's Gram summed into the float64 accumulator; ``"auto"`` (default) picks float32 when
    the first batch is float32 or narrower (float16, bfloat16: a model's embeddings) and
    float64 otherwise (float64, integer input). Float32 resolves Gram eigenvalues to
    ``4 eps_32 ||S||`` (singular values to ~1e-3 sigma_max), float64 to
    ``max(n, d) eps_64 ||Z'Z||``; see the module docstring for the measured accuracy.
    """

    def __init__(self, dim: int | None = None, *, precision: Precision = "auto") -> None:
        if precision not in ("auto", "float32", "float64"):
            raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
        self.dim = dim
        self.precision: Precision = precision
        self.n = 0
        self._dtype: torch.dtype | None = None
        self._shift: torch.Tensor | None = None
        self._nshift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._scatter: np.ndarray | None = None
        self._nsum: torch.Tensor | None = None
        self._nsumsq: torch.Tensor | None = None
        self._eig: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def working_dtype(self) -> torch.dtype | None:
        """dtype of the per-batch Gram (float32 or float64; None before the first batch)."""
        return self._dtype

    def update(self, batch: ArrayLike) -> CovarianceAccumulator:
        """Add the rows of a (b, d) batch (b >= 1); returns self."""
        t = _as_real_tensor(batch, "batch", check_finite=False).cpu()
        d = t.shape[1]
        if self.dim is not None and d != self.dim:
            raise ValueError(f"batch has {d} columns, the accumulator has dim {self.dim}")
        work = self._dtype or _working_dtype(self.precision, t.dtype)
        # Differences are formed in the wider of the input and working dtypes, then rounded
        # once to the working dtype (the shifts are representable in both).
        wide = torch.float64 if torch.float64 in (t.dtype, work) else torch.float32
        t = t.to(wide)
        inv_norm = torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
        if self._shift is None or self._nshift is None:
            # The shift is rounded to the working precision, so that z - c is formed exactly
            # (or with one rounding relative to |z - c|) in that precision.
            shift = t.to(torch.float64).mean(0).to(work).to(torch.float64)
            nshift = (t * inv_norm).to(torch.float64).mean(0).to(work).to(torch.float64)
        else:
            shift, nshift = self._shift, self._nshift
        y = (t - shift.to(wide)).to(work)
        yu = torch.addcmul(-nshift.to(wide), t, inv_norm).to(work)  # u - c_u
        sum_y, sum_u = _column_sums(y), _column_sums(yu)
        sum_u2 = _column_sums(yu.square_())
        # A NaN or inf anywhere makes a column sum non-finite: no separate pass over the batch.
        if not all(bool(torch.isfinite(v).all()) for v in (sum_y, sum_u, sum_u2)):
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                raise ValueError(f"batch contains {n_bad} non-finite values (NaN or inf)")
            raise ValueError("batch values are too large: their column sums overflow")
        if self._scatter is None:
            self.dim, self._dtype = d, work
            self._shift, self._nshift = shift, nshift
            # Upper triangle only, Fortran order: BLAS syrk updates it in place at half the
            # flops of a general matrix product.
            self._scatter = np.zeros((d, d), dtype=np.float64, order="F")
            self._sum = torch.zeros(d, dtype=torch.float64)
            self._nsum = torch.zeros(d, dtype=torch.float64)
            self._nsumsq = torch.zeros(d, dtype=torch.float64)
        self.n += t.shape[0]
        self._eig = None
        # The sums are of the same rounded y as the Gram, so S - s s' / n stays consistent.
        self._sum += sum_y
        self._nsum += sum_u
        self._nsumsq += sum_u2
        y_np = y.numpy()
        if work == torch.float64:
            self._scatter = _syrk_update(self._scatter, y_np)
        else:
            for i in range(0, y_np.shape[0], _FLOAT32_CHUNK_ROWS):
                _syrk_update_float32(self._scatter, y_np[i : i + _FLOAT32_CHUNK_ROWS])
        return self

    def _check(self) -> None:
        if self.n < 2 or self._scatter is None:
            raise ValueError(f"the accumulator needs at least 2 samples, has {self.n}")

    @property
    def mean(self) -> np.ndarray:
        self._check()
        return (self._shift + self._sum / self.n).numpy()

    def _centred_scatter(self) -> np.ndarray:
        upper = np.triu(self._scatter)
        scatter = upper + np.triu(upper, 1).T
        s = self._sum.numpy()
        scatter -= np.outer(s, s / self.n)
        return scatter

    def gram(self, center: bool = False) -> np.ndarray:
        """``Z'Z`` (uncentred) or the centred scatter ``sum (z - mu)(z - mu)'``."""
        self._check()
        g = self._centred_scatter()
        if not center:
            v = math.sqrt(self.n) * self.mean
            g += np.outer(v, v)
        return g

    def _eigenvalues(self) -> tuple[np.ndarray, np.ndarray]:
        """Floored eigenvalues (descending) of the centred scatter and of ``Z'Z``, cached."""
        if self._eig is not None:
            return self._eig
        n, d = self.n, int(self.dim)  # type: ignore[arg-type]
        mu = self.mean
        v = math.sqrt(n) * mu
        cen, unc = (e[::-1].clip(0.0) for e in eigvalsh_rank_one_pair(self._centred_scatter(), v))
        eps64 = np.finfo(np.float64).eps
        floors = [max(n, d) * eps64 * float(e[0]) if e.size else 0.0 for e in (cen, unc)]
        if self._dtype == torch.float32:
            # ||S|| <= ||C|| + n |mu - c|^2 (S = C + n (mu - c)(mu - c)'): the float32 rounding
            # scales with the shifted scatter that was actually accumulated.
            off = mu - self._shift.numpy()
            s_norm = float(cen[0]) + n * float(off @ off)
            floor32 = _FLOAT32_FLOOR * float(np.finfo(np.float32).eps) * s_norm
            floors = [max(f, floor32) for f in floors]
        for e, floor in zip((cen, unc), floors, strict=True):
            e[e <= floor] = 0.0
        self._eig = (cen, unc)
        return self._eig

    def spectrum(self, center: bool = True) -> Spectrum:
        """Same content as ``embedding_spectrum(Z, center, normalize=False)``.

        Both spectra come from one tridiagonalisation (:func:`eigvalsh_rank_one_pair`) and are
        cached until the next ``update``.
        """
        self._check()
        n, d = self.n, int(self.dim)  # type: ignore[arg-type]
        cen, unc = self._eigenvalues()
        sq = (cen if center else unc).copy()
        m = min(n, d)
        # Beyond the rank cap (min(n, d); min(n - 1, d) centred) the eigenvalues are rounding.
        sq[min(n - 1, d) if center else m :] = 0.0
        s = np.sqrt(sq[:m])
        cov = np.zeros(d)
        cov[:m] = sq[:m] / (n - 1 if center else n)
        return Spectrum(s, cov, n, d, center, False)

    def normalized_std(self, ddof: int = 1) -> float:
        """SimSiam normalised std from the normalised-row sums (equals :func:`normalized_std`)."""
        self._check()
        n = self.n
        var = (self._nsumsq - self._nsum * self._nsum / n) / (n - ddof)
        return float(var.clamp_min(0.0).sqrt().mean())


StreamingSpectrum = CovarianceAccumulator


def eigvalsh_rank_one_pair(c: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) of a symmetric C and of ``C + v v'`` from ONE tridiagonalisation.

    A Householder reflector H with ``H v = -+|v| e_1`` gives ``A = H C H``; LAPACK dsytrd (lower)
    reduces A to tridiagonal T with ``Q e_1 = e_1``, so ``Q'H (C + v v') H Q = T + |v|^2 e_1 e_1'``
    is tridiagonal too: both spectra follow from two O(d^2) tridiagonal solves after a single
    O(d^3) reduction (two dense eigvalsh otherwise). Backward stable: each eigenvalue moves by
    O(eps_64) times the norm of its own matrix, as with eigvalsh; a large |v| does not degrade
    the spectrum of C, which is reduced without v.
    """
    from scipy.linalg import eigvalsh_tridiagonal
    from scipy.linalg.lapack import dsytrd, dsytrd_lwork

    a = np.array(c, dtype=np.float64, order="F")
    v = np.asarray(v, dtype=np.float64).ravel()
    d = a.shape[0] if a.ndim == 2 else -1
    if a.shape != (d, d) or v.shape != (d,):
        raise ValueError(
            f"c must be square (d, d) and v of length d, got shapes {a.shape} and {v.shape}"
        )
    a = 0.5 * (a + a.T)
    vv = float(v @ v)
    if d <= 2:
        return np.linalg.eigvalsh(a), np.linalg.eigvalsh(a + np.outer(v, v))
    if vv > 0.0:
        h = v.copy()
        h[0] += math.copysign(math.sqrt(vv), v[0])
        beta = 2.0 / float(h @ h)
        p = beta * (a @ h)
        w = p - 0.5 * beta * float(h @ p) * h
        a -= np.outer(h, w)
        a -= np.outer(w, h)
    lwork, info = dsytrd_lwork(d, lower=1)
    _, diag, off, _, info = dsytrd(a, lower=1, lwork=int(lwork), overwrite_a=1)
    if info != 0:
        raise RuntimeError(f"LAPACK dsytrd failed (info={info})")
    eig_c = eigvalsh_tridiagonal(diag, off, check_finite=False, lapack_driver="sterf")
    diag = diag.copy()
    diag[0] += vv
    eig_g = eigvalsh_tridiagonal(diag, off, check_finite=False, lapack_driver="sterf")
    return eig_c, eig_g


def _syrk_update(scatter: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``scatter += y' y`` on the upper triangle (BLAS dsyrk; float64, Fortran-ordered scatter)."""
    from scipy.linalg.blas import dsyrk

    # y is C-ordered (b, d), so y.T is a Fortran-ordered (d, b) view: no copy.
    return dsyrk(1.0, y.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)


def _syrk_update_float32(scatter: np.ndarray, y: np.ndarray) -> None:
    """``scatter += y' y`` (upper triangle): float32 BLAS ssyrk, summed into float64 in place."""
    from scipy.linalg.blas import ssyrk

    np.add(scatter, ssyrk(1.0, y.T, trans=0, lower=0), out=scatter)


def _column_sums(x: torch.Tensor) -> torch.Tensor:
    """Column sums in float64: exact float64 sum, or float32 BLAS gemv over row chunks of at
    most 4096 rows (the rounding scale of the float32 Gram) added in float64."""
    if x.dtype == torch.float64:
        return x.sum(0)
    ones = torch.ones(min(x.shape[0], _FLOAT32_CHUNK_ROWS), dtype=x.dtype)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, x.shape[0], _FLOAT32_CHUNK_ROWS):
        chunk = x[i : i + _FLOAT32_CHUNK_ROWS]
        total += torch.mv(chunk.T, ones[: chunk.shape[0]]).to(torch.float64)
    return total


def _working_dtype(precision: Precision, dtype: torch.dtype) -> torch.dtype:
    if precision == "float64":
        return torch.float64
    if precision == "float32":
        return torch.float32
    return torch.float32 if dtype.is_floating_point and dtype.itemsize <= 4 else torch.float64


def _rows(x: ArrayLike) -> int:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    return int(shape[0]) if len(shape) >= 1 else 0


def _as_real_tensor(batch: ArrayLike, name: str, check_finite: bool = True) -> torch.Tensor:
    """Checked 2-D real tensor with >= 1 row: float32 stays float32 (float16 / bfloat16 become
    float32), everything else becomes float64; no copy of float32 / float64 input.
    ``check_finite=False`` leaves the NaN / inf check to the caller."""
    if isinstance(batch, torch.Tensor):
        t = batch.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    else:
        arr = np.asarray(batch)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype not in (torch.float32, torch.float64):
        low = t.dtype.is_floating_point and t.dtype.itemsize <= 4
        t = t.to(torch.float32 if low else torch.float64)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (rows, dim) with rows >= 1, got {tuple(t.shape)}")
    if check_finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains {int((~torch.isfinite(t)).sum())} non-finite values")
    return t.contiguous()


# ----------------------------------------------------------------------------- report

Verdict = Literal["healthy", "dimensional_collapse", "complete_collapse"]


@dataclass(frozen=True)
class CollapseThresholds:
    """Verdict thresholds (see the module docstring for the reasoning).

    complete_nstd_factor: complete if normalised std < factor / sqrt(d).
    complete_effective_rank: complete if RankMe < this.
    dimensional_rank_fraction: dimensional if RankMe / min(n, d) < this.
    dimensional_numerical_fraction: dimensional if numerical rank / min(n, d) < this.
    numerical_rank_rtol: relative tolerance of the numerical rank (on singular values).
    """

    complete_nstd_factor: float = 0.1
    complete_effective_rank: float = 1.5
    dimensional_rank_fraction: float = 0.25
    dimensional_numerical_fraction: float = 0.5
    numerical_rank_rtol: float = 1e-4


@dataclass(frozen=True)
class CollapseReport:
    """Every collapse statistic of one embedding matrix plus the verdict and its reasons.

    ``effective_rank``: RankMe (sigma, uncentred, eps 1e-7); ``effective_rank_squared``: the
    sigma^2 convention. ``covariance_eigenvalues``: centred, descending, length d.
    ``singular_values``: uncentred Z, descending, length min(n, d). ``alignment`` is None without
    a second view; ``uniformity`` is None for streamed reports (it needs the rows).
    """

    verdict: Verdict
    reasons: list[str]
    n_samples: int
    dim: int
    effective_rank: float
    effective_rank_squared: float
    effective_rank_fraction: float
    participation_ratio: float
    numerical_rank: int
    alpha_req: AlphaReqResult | None
    normalized_std: float
    normalized_std_healthy: float
    alignment: float | None
    uniformity: float | None
    singular_values: np.ndarray
    covariance_eigenvalues: np.ndarray
    thresholds: CollapseThresholds
    warnings: list[str] = field(default_factory=list)

    @property
    def collapsed(self) -> bool:
        return self.verdict != "healthy"

    def to_dict(self, spectra: bool = True) -> dict[str, Any]:
        """JSON-ready dict (arrays as lists; ``spectra=False`` drops them)."""
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if isinstance(value, np.ndarray):
                if not spectra:
                    continue
                value = [float(v) for v in value]
            elif isinstance(value, (AlphaReqResult, CollapseThresholds)):
                value = asdict(value)
            out[key] = value
        return out


def _verdict(
    n: int, d: int, erank: float, nrank: int, nstd: float, th: CollapseThresholds
) -> tuple[Verdict, list[str]]:
    m = min(n, d)
    complete, dimensional = [], []
    nstd_cut = th.complete_nstd_factor / math.sqrt(d)
    if nstd < nstd_cut:
        complete.append(
            f"normalized std {nstd:.3g} < {th.complete_nstd_factor:g}/sqrt(d) = {nstd_cut:.3g}"
        )
    if erank < th.complete_effective_rank:
        complete.append(f"effective rank {erank:.3g} < {th.complete_effective_rank:g}")
    if complete:
        return "complete_collapse", complete
    if erank / m < th.dimensional_rank_fraction:
        dimensional.append(
            f"effective rank {erank:.3g} / min(n, d) = {erank / m:.3g} < {th.dimensional_rank_fraction:g}"
        )
    if nrank / m < th.dimensional_numerical_fraction:
        dimensional.append(
            f"numerical rank {nrank} / min(n, d) = {nrank / m:.3g} < "
            f"{th.dimensional_numerical_fraction:g}"
        )
    if dimensional:
        return "dimensional_collapse", dimensional
    return "healthy", [
        f"effective rank {erank:.3g} / min(n, d) = {erank / m:.3g} >= {th.dimensional_rank_fraction:g}",
        f"normalized std {nstd:.3g} (healthy ~ 1/sqrt(d) = {1 / math.sqrt(d):.3g})",
    ]


def report_from_accumulator(
    acc: CovarianceAccumulator,
    *,
    thresholds: CollapseThresholds | None = None,
    fit_range: tuple[int, int] | None = None,
    alignment_value: float | None = None,
    uniformity_value: float | None = None,
) -> CollapseReport:
    """:class:`CollapseReport` from streamed statistics (exact; see the module docstring)."""
    th = thresholds or CollapseThresholds()
    acc._check()
    n, d = acc.n, int(acc.dim)  # type: ignore[arg-type]
    notes: list[str] = []
    if n < d:
        notes.append(
            f"fewer samples ({n}) than dimensions ({d}): the spectrum is rank-limited to {n}; "
            "use more samples for a meaningful rank"
        )
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    unc = acc.spectrum(center=False)
    cen = acc.spectrum(center=True)
    s = unc.singular_values
    erank = effective_rank_from_singular_values(s)
    erank_sq = effective_rank_from_singular_values(s, convention="squared")
    nrank = _count_above(s, None, th.numerical_rank_rtol)
    nstd = acc.normalized_std()
    alpha = None
    eig = cen.covariance_eigenvalues
    positive = int(np.sum(eig > 1e-10 * max(float(eig.max()), 1e-300)))
    try:
        if fit_range is not None or positive >= 2:
            alpha = alpha_req_from_eigenvalues(
                np.where(np.arange(d) < positive, eig, 0.0), fit_range or (1, positive)
            )
    except ValueError as exc:
        notes.append(f"alpha-ReQ not computed: {exc}")
    verdict, reasons = _verdict(n, d, erank, nrank, nstd, th)
    return CollapseReport(
        verdict=verdict,
        reasons=reasons,
        n_samples=n,
        dim=d,
        effective_rank=erank,
        effective_rank_squared=erank_sq,
        effective_rank_fraction=erank / min(n, d),
        participation_ratio=_participation_ratio_from_eigenvalues(eig),
        numerical_rank=nrank,
        alpha_req=alpha,
        normalized_std=nstd,
        normalized_std_healthy=1.0 / math.sqrt(d),
        alignment=alignment_value,
        uniformity=uniformity_value,
        singular_values=s,
        covariance_eigenvalues=eig,
        thresholds=th,
        warnings=notes,
    )


def collapse_report(
    z: ArrayLike,
    z2: ArrayLike | None = None,
    *,
    thresholds: CollapseThresholds | None = None,
    fit_range: tuple[int, int] | None = None,
    uniformity_samples: int | None = 2048,
    seed: int = 0,
    batch_size: int = 8192,
    precision: Precision = "auto",
) -> CollapseReport:
    """All collapse statistics of Z (and alignment with a second view ``z2``) plus the verdict.

    The spectrum goes through :class:`CovarianceAccumulator` in batches of ``batch_size`` rows.
    alpha-ReQ defaults to the centred eigenvalues above 1e-10 lambda_max (numerical zeros of a
    rank-deficient spectrum are excluded); ``uniformity`` uses at most ``uniformity_samples`` rows.
    ``precision`` (default ``"auto"``: float32 for float32 / narrower Z, else float64) is the
    dtype of the Gram products of the accumulator and of :func:`uniformity`; all sums,
    eigenvalues and statistics are float64 (accuracy in the module docstring).
    """
    if not isinstance(z, torch.Tensor):
        z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (n_samples, dim), got shape {tuple(z.shape)}")
    # Batches are converted (and checked) one at a time: no full float64 copy.
    acc = CovarianceAccumulator(int(z.shape[1]), precision=precision)
    for i in range(0, int(z.shape[0]), batch_size):
        acc.update(z[i : i + batch_size])
    acc._check()
    align = alignment(z, z2) if z2 is not None else None
    unif = uniformity(z, max_samples=uniformity_samples, seed=seed, precision=precision)
    return report_from_accumulator(
        acc,
        thresholds=thresholds,
        fit_range=fit_range,
        alignment_value=align,
        uniformity_value=unif,
    )
