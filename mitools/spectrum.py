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
    ``torch.pdist`` in their code). Lower is better for both; uniformity is in [-2t, 0], 0 for
    complete collapse (-2t only in the limit of antipodal pairs).

Streaming (:class:`CovarianceAccumulator`, alias :class:`StreamingSpectrum`)
    Accumulates, in float64, n, the column sums and the Gram (d x d) of Z, and the per-dimension
    sums and squares of the L2-normalised rows, batch by batch (around a fixed shift, against
    cancellation; the Gram update is a BLAS syrk, half the flops of a matrix product). Everything
    above follows exactly from these: the eigenvalues of ``G = Z'Z`` are the squared singular
    values sigma_k^2 of the uncentred Z (so RankMe, which needs sigma_k = sqrt(eig_k(G)), and the
    "squared" convention are both exact in exact arithmetic), the centred scatter is
    ``G - n mu mu'`` and the normalised std comes from the normalised sums. Only the rounding
    differs from an SVD of Z: the Gram squares the condition number, so sigma_k^2 is resolved to
    ~max(n, d) * eps_64 * sigma_max^2 absolute (singular values below ~1e-6 sigma_max are not
    resolved); Gram eigenvalues under ``max(n, d) * eps_64 * lambda_max`` (numpy's matrix_rank
    rule applied to sigma^2) are set to exactly 0, which makes rank-deficient (collapsed) Z come
    out right. :func:`numerical_rank`'s default rtol = 1e-4 is far above that floor. The tests
    check streamed against SVD spectra to that floor, and RankMe to 1e-9 relative.
    :func:`collapse_report` uses the same path, so in-memory and streaming reports agree to
    rounding.

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

All functions accept numpy arrays or torch tensors (any device; computed in float64), check that
Z is 2-D, finite and has n >= 2 rows, and return Python floats / numpy arrays.
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
    "embedding_spectrum",
    "normalized_std",
    "numerical_rank",
    "participation_ratio",
    "uniformity",
]

ArrayLike = np.ndarray | torch.Tensor


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
    singular_values: np.ndarray,
    *,
    convention: Literal["rankme", "squared"] = "rankme",
    eps: float = 1e-7,
) -> float:
    """RankMe from given singular values (same definition as :func:`effective_rank`)."""
    if convention not in ("rankme", "squared"):
        raise ValueError(f"convention must be 'rankme' or 'squared', got {convention!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    s = np.asarray(singular_values, dtype=np.float64)
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
    eigenvalues: np.ndarray, fit_range: tuple[int, int] | None = None
) -> AlphaReqResult:
    """alpha-ReQ fit on given eigenvalues (sorted descending inside).

    ``fit_range=(lo, hi)``: 1-based inclusive indices; default (1, number of eigenvalues > 0).
    Non-positive eigenvalues inside the range are an error (log of 0): shrink the range.
    """
    eig = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
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
    z: ArrayLike, t: float = 2.0, *, max_samples: int | None = 2048, seed: int = 0
) -> float:
    """Wang & Isola uniformity ``log mean_{i<j} exp(-t ||u_i - u_j||^2)`` of L2-normalised rows.

    O(n^2 d): above ``max_samples`` rows a uniform random subset (``seed``) is used; None uses
    every row. The sum over pairs is shifted by the smallest distance (a log-sum-exp), so large
    t does not underflow.
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    n = _rows(z)
    if max_samples is not None and n > max_samples:
        # Subsample before the float64 copy: the full matrix may be large.
        g = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(n, generator=g)[:max_samples].sort().values
        z = z[keep.to(z.device)] if isinstance(z, torch.Tensor) else np.asarray(z)[keep.numpy()]
    u = _l2_normalize_rows(_as_float64(z))
    n = u.shape[0]
    gram = u @ u.T
    sq_norm = gram.diagonal().clone()
    d2 = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram).clamp_min_(0.0)
    d2.fill_diagonal_(math.inf)  # exp(-inf) = 0: the diagonal drops out of the sum
    # The full matrix counts each pair i < j twice, as does n (n - 1). Shifting by the smallest
    # distance keeps the largest term at exp(0) = 1, so no underflow for any t.
    shift = float(d2.min())
    total = torch.exp(-t * (d2 - shift)).sum()
    return float(-t * shift + torch.log(total) - math.log(n * (n - 1)))


# ----------------------------------------------------------------------------- streaming


class CovarianceAccumulator:
    """Float64 sufficient statistics of Z, batch by batch; only d x d is held.

    ``update(batch)`` adds rows. The sums are taken around a fixed shift c (the first batch's
    mean; c_u for the L2-normalised rows): n, ``sum(z - c)``, ``S = sum (z - c)(z - c)'`` and the
    per-dimension sums / squares of ``u - c_u``. Then the uncentred Gram is
    ``Z'Z = S + c s' + s c' + n c c'`` (s = sum(z - c)), the centred scatter is ``S - s s' / n``
    and the normalised variances follow likewise; the shift avoids the cancellation of
    ``Z'Z - n mu mu'`` when the mean is large against the spread (constant rows give exactly 0).
    The spectrum, RankMe (both conventions), participation ratio, numerical rank, alpha-ReQ and
    normalised std from these equal the in-memory ones up to rounding (module docstring).
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._nshift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._scatter: np.ndarray | None = None
        self._nsum: torch.Tensor | None = None
        self._nsumsq: torch.Tensor | None = None

    def update(self, batch: ArrayLike) -> CovarianceAccumulator:
        """Add the rows of a (b, d) batch (b >= 1); returns self."""
        t = _as_float64(batch, "batch") if _rows(batch) >= 2 else _as_float64_single(batch)
        t = t.cpu()
        d = t.shape[1]
        if self.dim is None:
            self.dim = d
        if d != self.dim:
            raise ValueError(f"batch has {d} columns, the accumulator has dim {self.dim}")
        u = _l2_normalize_rows(t)
        if self._scatter is None:
            self._shift = t.mean(0)
            self._nshift = u.mean(0)
            self._sum = torch.zeros(d, dtype=torch.float64)
            # Upper triangle only, Fortran order: BLAS syrk updates it in place at half the
            # flops of a general matrix product.
            self._scatter = np.zeros((d, d), dtype=np.float64, order="F")
            self._nsum = torch.zeros(d, dtype=torch.float64)
            self._nsumsq = torch.zeros(d, dtype=torch.float64)
        y = t - self._shift
        yu = u - self._nshift
        self.n += t.shape[0]
        self._sum += y.sum(0)
        y_np = y.numpy()
        self._scatter = _syrk_update(self._scatter, y_np)
        self._nsum += yu.sum(0)
        self._nsumsq += (yu * yu).sum(0)
        return self

    def _check(self) -> None:
        if self.n < 2 or self._scatter is None:
            raise ValueError(f"the accumulator needs at least 2 samples, has {self.n}")

    @property
    def mean(self) -> np.ndarray:
        self._check()
        return (self._shift + self._sum / self.n).numpy()

    def gram(self, center: bool = False) -> np.ndarray:
        """``Z'Z`` (uncentred) or the centred scatter ``sum (z - mu)(z - mu)'``."""
        self._check()
        s, c, n = self._sum, self._shift, self.n
        upper = np.triu(self._scatter)
        scatter = torch.from_numpy(upper + np.triu(upper, 1).T)
        if center:
            g = scatter - torch.outer(s, s) / n
        else:
            g = scatter + torch.outer(c, s) + torch.outer(s, c) + n * torch.outer(c, c)
        return g.numpy().copy()

    def spectrum(self, center: bool = True) -> Spectrum:
        """Same content as ``embedding_spectrum(Z, center, normalize=False)``."""
        self._check()
        n, d = self.n, int(self.dim)  # type: ignore[arg-type]
        g = torch.from_numpy(self.gram(center))
        eig = torch.linalg.eigvalsh(0.5 * (g + g.T)).flip(0).clamp_min(0.0).numpy()
        m = min(n, d)
        sq = eig.copy()
        # Rounding floor of the Gram's eigenvalues (matrix_rank's rule applied to sigma^2): below
        # it an eigenvalue is indistinguishable from 0, and leaving the noise in would add ~m
        # spurious sigma ~ sqrt(eps) sigma_max to RankMe's sum for rank-deficient Z.
        if sq.size:
            sq[sq <= max(n, d) * np.finfo(np.float64).eps * sq[0]] = 0.0
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


def _syrk_update(scatter: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``scatter += y' y`` on the upper triangle (BLAS dsyrk; float64, Fortran-ordered scatter)."""
    from scipy.linalg.blas import dsyrk

    # y is C-ordered (b, d), so y.T is a Fortran-ordered (d, b) view: no copy.
    return dsyrk(1.0, y.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)


def _rows(x: ArrayLike) -> int:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    return int(shape[0]) if len(shape) >= 1 else 0


def _as_float64_single(batch: ArrayLike) -> torch.Tensor:
    """Validation for a batch of one row (``_as_float64`` requires two)."""
    t = batch.detach().to(torch.float64) if isinstance(batch, torch.Tensor) else None
    if t is None:
        arr = np.asarray(batch)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"batch must be a real numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"batch must be 2-D (rows, dim) with rows >= 1, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"batch contains {int((~torch.isfinite(t)).sum())} non-finite values")
    return t


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
) -> CollapseReport:
    """All collapse statistics of Z (and alignment with a second view ``z2``) plus the verdict.

    The spectrum goes through :class:`CovarianceAccumulator` in batches of ``batch_size`` rows.
    alpha-ReQ defaults to the centred eigenvalues above 1e-10 lambda_max (numerical zeros of a
    rank-deficient spectrum are excluded); ``uniformity`` uses at most ``uniformity_samples`` rows.
    """
    if not isinstance(z, torch.Tensor):
        z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (n_samples, dim), got shape {tuple(z.shape)}")
    # Batches are converted to float64 (and checked) one at a time: no full float64 copy.
    acc = CovarianceAccumulator(int(z.shape[1]))
    for i in range(0, int(z.shape[0]), batch_size):
        acc.update(z[i : i + batch_size])
    acc._check()
    align = alignment(z, z2) if z2 is not None else None
    unif = uniformity(z, max_samples=uniformity_samples, seed=seed)
    return report_from_accumulator(
        acc,
        thresholds=thresholds,
        fit_range=fit_range,
        alignment_value=align,
        uniformity_value=unif,
    )
