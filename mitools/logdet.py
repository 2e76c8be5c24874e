"""Log-determinants of covariance matrices: exact (Cholesky) and truncated Taylor series.

This is the numerical core of the EMI objective (second-order MI from covariance log-determinants,
with a Taylor surrogate after eigenvalue rescaling; README, "The Taylor log-det surrogate").

Exact
    ``logdet_exact(C) = 2 * sum_i log L_ii`` with ``C = L L'`` (Cholesky), by default in float64.
    Its gradient with respect to C is ``C^{-1}``.

Taylor surrogate
    For a scale ``s > 0`` and ``M = I - C / s``,

        log det C = d log s + sum_i log(lambda_i / s) = d log s - sum_{k>=1} tr(M^k) / k,

    which converges iff every eigenvalue satisfies ``0 < lambda_i / s < 2`` (``|1 - lambda_i/s| < 1``).
    ``logdet_taylor`` truncates the sum at order K using matrix products only (no
    eigendecomposition of C inside the series). The scale ``s`` is always treated as a constant
    (detached): the value is that of the truncated series at that s, and its gradient is the closed
    form

        d/dC [d log s - sum_{k=1..K} tr(M^k)/k] = C^{-1} (I - M^K)          (C symmetric),

    so the relative gradient error is governed by ``M^K`` exactly as the value error is.

Truncation error (signed, ``taylor_K - exact``)

        R_K = sum_i sum_{k>K} (1 - lambda_i/s)^k / k,   |R_K| <= d q^(K+1) / ((K+1)(1-q)),

    with ``q = max_i |1 - lambda_i / s|``. When every ratio lies in (0, 1] (``s >= lambda_max``) all
    terms are >= 0, so the truncated series over-estimates log det and decreases monotonically in K.

Conventions: natural logarithms (nats); matrices are batched over leading dimensions
``(..., d, d)``; only the symmetric part ``(C + C')/2`` of C is used.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mitools._lazy_buffers import LazyBuffersMixin
from mitools._tensor_cache import TensorCache

__all__ = [
    "logdet_exact",
    "logdet_taylor",
    "RunningScale",
    "TaylorConvergenceWarning",
    "lambda_max_power",
    "gershgorin_upper_bound",
    "taylor_scale",
    "resolve_taylor_scale",
    "taylor_gradient_closed_form",
    "taylor_truncation_error",
    "taylor_series_from_eigenvalues",
    "taylor_error_bound",
    "order_for_tolerance",
    "reset_violation_warnings",
    "SCALE_RULES",
]

#: Named scale rules understood by :func:`logdet_taylor` (besides a number, tensor or RunningScale).
SCALE_RULES = ("max_eig", "midrange", "power", "trace")

OnViolation = Literal["warn", "raise", "clamp", "ignore"]


class TaylorConvergenceWarning(RuntimeWarning):
    """The spectrum of C / s leaves the convergence region (0, 2) of the log-det Taylor series."""


_WARNED: set[str] = set()


def reset_violation_warnings() -> None:
    """Forget which scale rules already warned (``on_violation="warn"`` warns once per rule)."""
    _WARNED.clear()


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_matrix(C, name: str = "C", check_finite: bool = True) -> Tensor:
    if isinstance(C, np.ndarray):
        C = torch.from_numpy(C)
    if not isinstance(C, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(C).__name__}")
    if C.is_complex():
        raise ValueError(f"{name} must be real, got dtype {C.dtype}")
    if not C.is_floating_point():
        C = C.to(torch.float64)
    if C.ndim < 2:
        raise ValueError(f"{name} must have shape (..., d, d), got shape {tuple(C.shape)}")
    if C.shape[-1] != C.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dims, got shape {tuple(C.shape)}")
    if C.shape[-1] == 0:
        raise ValueError(f"{name} is empty (d = 0), got shape {tuple(C.shape)}")
    if check_finite and not bool(torch.isfinite(C.detach()).all()):
        bad = int((~torch.isfinite(C.detach())).sum())
        raise ValueError(f"{name} has {bad} non-finite entries (NaN or inf)")
    return C


def _check_ridge(ridge: float) -> float:
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    return ridge


#: Dtypes the linear-algebra kernels (Cholesky, eigvalsh) accept, on CPU and CUDA alike.
_LINALG_DTYPES = (torch.float32, torch.float64)


def _check_linalg_dtype(A: Tensor, what: str) -> None:
    """One-line ValueError instead of torch's "... not implemented for 'Half'" deep in a kernel."""
    if A.dtype not in _LINALG_DTYPES:
        raise ValueError(
            f"{what} does not support dtype {A.dtype}; pass C as float32 or float64 "
            f"(or float64=True to compute in float64)"
        )


def _prepare(C: Tensor, ridge: float, dtype: torch.dtype | None = None) -> Tensor:
    """Symmetric part of C (in ``dtype``) plus ``ridge * I``."""
    if dtype is not None:
        C = C.to(dtype)
    C = 0.5 * (C + C.mT)
    if ridge:
        C = C + ridge * torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    return C


def _trace(C: Tensor) -> Tensor:
    return C.diagonal(dim1=-2, dim2=-1).sum(-1)


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------


def logdet_exact(C: Tensor, *, ridge: float = 0.0, float64: bool = True) -> Tensor:
    """``log det(C + ridge I)`` through a Cholesky factorisation, batched over leading dims.

    Parameters
    ----------
    C : (..., d, d) symmetric positive-definite tensor (only its symmetric part is used).
    ridge : added to the diagonal first (``ridge * I``); use it for batch sizes below d.
    float64 : factorise in float64 (recommended: float32 Cholesky of an ill-conditioned
        covariance loses digits quickly). The result is returned in C's dtype either way.

    Returns
    -------
    Tensor of shape ``C.shape[:-2]``; differentiable, gradient ``C^{-1}``.

    Raises
    ------
    ValueError on a non-square or non-finite C, or when C + ridge I is not positive definite
    (never returns NaN); the message names the failing leading (batch) index and suggests a ridge.
    """
    C = _as_matrix(C)
    ridge = _check_ridge(ridge)
    A = _prepare(C, ridge, torch.float64 if float64 else None)
    _check_linalg_dtype(A, "logdet_exact (Cholesky)")
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info > 0).any()):
        idx = torch.nonzero(info > 0)
        first = tuple(int(i) for i in idx[0]) if info.ndim else ()
        order = int(info.reshape(-1)[info.reshape(-1) > 0][0])
        scale = float(_trace(A.detach()).abs().max()) / A.shape[-1]
        hint = max(1e-6 * scale, 1e-8)
        where = f" (batch index {first}, {idx.shape[0]} failing matrices in all)" if first else ""
        raise ValueError(
            f"C + {ridge} I is not positive definite: Cholesky failed at the leading minor of order "
            f"{order}{where}. A covariance "
            f"estimated from fewer samples than dimensions, or a collapsed representation, is "
            f"singular; add a ridge, e.g. ridge={hint:.1e} (about 1e-6 of the mean diagonal)."
        )
    ld = 2.0 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)
    return ld.to(C.dtype)


# --------------------------------------------------------------------------------------------
# spectrum bounds and scale rules
# --------------------------------------------------------------------------------------------


def gershgorin_upper_bound(C: Tensor) -> Tensor:
    """``max_i sum_j |C_ij|``: an upper bound on every eigenvalue of symmetric C (O(d^2), sound,
    often loose for correlated covariances). Shape ``C.shape[:-2]``, detached."""
    return C.detach().abs().sum(-1).amax(-1)


_START_VECTORS = TensorCache(maxsize=64)


def _start_vector(d: int, dtype: torch.dtype, device: torch.device, seed: int) -> Tensor:
    """The fixed Gaussian start vector of power iteration, built once per (d, dtype, device):
    drawing it on the host and copying it over on every call would synchronise with a GPU."""

    def build() -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype).to(device)
        return v / v.norm()

    return _START_VECTORS.get((d, dtype, device, seed), build)


def _power_iterate(A: Tensor, v: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``iters`` normalised products ``v <- A v / |A v|`` from unit v (..., d, 1); returns the
    Rayleigh quotient ``v' A v`` (shape ``A.shape[:-2]``) and the final v."""
    tiny = torch.finfo(A.dtype).tiny
    for _ in range(iters):
        w = A @ v
        v = w / w.norm(dim=-2, keepdim=True).clamp_min(tiny)
    return (v.mT @ A @ v)[..., 0, 0], v


def lambda_max_power(C: Tensor, iters: int = 20, *, seed: int = 0) -> Tensor:
    """Largest eigenvalue of symmetric PSD C by power iteration (Rayleigh quotient), detached.

    Starts from a fixed Gaussian vector (``seed``) so the estimate is reproducible. The Rayleigh
    quotient never exceeds lambda_max, so this is an under-estimate; callers multiply by a safety
    factor. Cost: ``iters`` matrix-vector products, no host synchronisation.
    """
    if iters < 1:
        raise ValueError(f"power iterations must be >= 1, got {iters}")
    A = C.detach()
    v = _start_vector(A.shape[-1], A.dtype, A.device, seed)
    v = v.expand(*A.shape[:-1]).unsqueeze(-1)  # (..., d, 1)
    return _power_iterate(A, v, iters)[0]


class RunningScale(LazyBuffersMixin, torch.nn.Module):
    """Exponential moving average of the largest eigenvalue across calls (EMI's "moving average
    tracks the eigenvalue scale"), for use as ``logdet_taylor(C, scale=running)``.

    On each call in training mode: ``est = max over the batch of lambda_max_power(C)``;
    the first call sets ``value = est``, later calls ``value <- momentum * value +
    (1 - momentum) * est``. The scale returned is ``safety * value``. In eval mode the buffer is
    not updated. ``value`` (and ``initialized``) are buffers, so they go into ``state_dict``.
    A training-mode call never synchronises with the device (the first-call branch is a
    ``torch.where`` on the ``initialized`` buffer).

    ``warm_iters`` (default None: every call runs ``power_iters`` steps from the same fixed start
    vector): after the first training call, start power iteration from the previous call's
    eigenvector estimate and run only ``warm_iters`` steps. Covariances change little from one
    training step to the next, so a few steps from the previous vector match many cold ones at a
    fraction of the operators (each step is four kernel launches, which dominate the EMI loss on a
    GPU at small sizes). The vector is the buffer ``vector`` (in ``state_dict`` only with
    ``warm_iters``, so an exact resume continues the same sequence). Both ways the estimate is a
    Rayleigh quotient: it never exceeds lambda_max.

    Because the EMA lags, a spectrum that grows fast can leave the convergence region; the
    current estimate ``last_estimate`` is kept so ``logdet_taylor`` can check the ratio cheaply.
    For a spectrum growing by a factor g per step the EMA settles at
    ``lambda_max/s = (1 - momentum/g) / ((1 - momentum) * safety)``, which reaches 2 at
    ``g = momentum / (1 - 2 (1 - momentum) safety)``: 1.1 % growth per step for momentum 0.99 and
    safety 1.05, 14 % for momentum 0.9 (analysis/taylor_order.py, study "running", checks this).
    """

    value: Tensor
    initialized: Tensor
    vector: Tensor

    def __init__(
        self,
        momentum: float = 0.99,
        safety: float = 1.05,
        power_iters: int = 20,
        warm_iters: int | None = None,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not safety > 0:
            raise ValueError(f"safety must be > 0, got {safety}")
        if power_iters < 1:
            raise ValueError(f"power_iters must be >= 1, got {power_iters}")
        if warm_iters is not None and not (isinstance(warm_iters, int) and warm_iters >= 1):
            raise ValueError(f"warm_iters must be None or an int >= 1, got {warm_iters!r}")
        self.momentum = float(momentum)
        self.safety = float(safety)
        self.power_iters = int(power_iters)
        self.warm_iters = warm_iters
        self.register_buffer("value", torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("vector", torch.empty(0), persistent=warm_iters is not None)
        self.last_estimate: Tensor | None = None

    def _estimate(self, A: Tensor) -> Tensor:
        warm = self.warm_iters is not None and self.training and self.vector.numel() > 0
        if warm:
            if self.vector.shape != (*A.shape[:-1], 1):
                raise ValueError(
                    f"RunningScale warm start: the stored vector has shape "
                    f"{tuple(self.vector.shape)} but C has shape {tuple(A.shape)}"
                )
            start, iters = self.vector.to(dtype=A.dtype, device=A.device), self.warm_iters
        else:
            start = _start_vector(A.shape[-1], A.dtype, A.device, 0)
            start, iters = start.expand(*A.shape[:-1]).unsqueeze(-1), self.power_iters
        est, v = _power_iterate(A, start, iters)
        if self.warm_iters is not None and self.training:
            self.vector = v  # a fresh tensor (the last normalised product), not a view
        return est

    @torch.no_grad()
    def update(self, C: Tensor) -> Tensor:
        """Estimate lambda_max of C (max over leading dims), update the EMA (training mode only),
        and return the scale ``safety * value`` (float64 scalar tensor)."""
        est = self._estimate(C.detach()).amax().to(torch.float64).to(self.value.device)
        self.last_estimate = est
        if self.training:
            blended = self.value * self.momentum + (1.0 - self.momentum) * est
            self.value.copy_(torch.where(self.initialized, blended, est))
            self.initialized.fill_(True)
        elif not bool(self.initialized):
            raise ValueError(
                "RunningScale is uninitialised and in eval mode: call it once in train mode"
            )
        return self.safety * self.value

    def forward(self, C: Tensor) -> Tensor:
        return self.update(C)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A state saved with or without warm start loads either way: without a stored vector the
        # next training call starts cold, and a stored vector is ignored without warm_iters.
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "vector"
        if key in missing_keys:
            missing_keys.remove(key)
        if key in unexpected_keys:
            unexpected_keys.remove(key)

    def extra_repr(self) -> str:
        warm = f", warm_iters={self.warm_iters}" if self.warm_iters is not None else ""
        return (
            f"momentum={self.momentum}, safety={self.safety}, power_iters={self.power_iters}{warm}"
        )


def taylor_scale(
    C: Tensor,
    scale: str | float | Tensor | RunningScale = "trace",
    *,
    power_iters: int = 20,
    safety: float = 1.05,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Resolve a scale rule to ``(s, lambda_min, lambda_max)`` for symmetric C (detached).

    ``lambda_min`` / ``lambda_max`` are what the rule already knows about the spectrum (exact for
    eigenvalue rules, the power estimate for "power" and RunningScale, None otherwise).

    Rules
    -----
    "max_eig"  : s = lambda_max (torch.linalg.eigvalsh). Ratios in (0, 1]: q = 1 - 1/kappa.
    "midrange" : s = (lambda_min + lambda_max)/2, the s minimising q = (kappa-1)/(kappa+1);
                 a reference point for the study (needs the full spectrum).
    "power"    : s = safety * power-iteration estimate of lambda_max (``power_iters`` products).
    "trace"    : s = tr(C)/d, the mean eigenvalue. Cheapest, but lambda_max/s < 2 FAILS as soon as
                 one eigenvalue exceeds twice the mean (a dominant direction, or a decaying
                 spectrum), and then the series diverges. For a geometric spectrum of condition
                 number kappa, lambda_max/mean ~ ln(kappa)/(1 - 1/kappa): already > 2 at
                 kappa ~ 5. Combine with on_violation="clamp" (or use "power").
    number / tensor : used as given (broadcast over the leading dims of C).
    RunningScale : EMA of power estimates across calls (see the class).

    ``check_finite`` (default True) raises ValueError unless s is finite and > 0; it reads s on
    the host (a device synchronisation). With False a bad s propagates (as inf or NaN).
    """
    A = C.detach()
    batch = A.shape[:-2]
    lam_min = lam_max = None
    if isinstance(scale, RunningScale):
        s = scale.update(A).to(dtype=A.dtype, device=A.device).expand(batch)
        lam_max = scale.last_estimate.to(dtype=A.dtype, device=A.device).expand(batch)
    elif isinstance(scale, str):
        if scale in ("max_eig", "midrange"):
            _check_linalg_dtype(A, f"scale rule {scale!r} (eigvalsh)")
            ev = torch.linalg.eigvalsh(A)
            lam_min, lam_max = ev[..., 0], ev[..., -1]
            s = lam_max if scale == "max_eig" else 0.5 * (lam_min + lam_max)
        elif scale == "power":
            lam_max = lambda_max_power(A, power_iters)
            s = safety * lam_max
        elif scale == "trace":
            s = _trace(A) / A.shape[-1]
        else:
            raise ValueError(
                f"unknown scale rule {scale!r}; use one of {SCALE_RULES}, a number, a "
                f"tensor or a RunningScale"
            )
    elif isinstance(scale, (int, float)):
        s = torch.full(batch, float(scale), dtype=A.dtype, device=A.device)
    elif isinstance(scale, Tensor):
        try:
            s = scale.detach().to(dtype=A.dtype, device=A.device).expand(batch)
        except RuntimeError as err:
            raise ValueError(
                f"scale of shape {tuple(scale.shape)} does not broadcast to the batch "
                f"shape {tuple(batch)} of C"
            ) from err
    else:
        raise ValueError(
            f"scale must be a rule name, number, tensor or RunningScale, got {type(scale).__name__}"
        )
    if check_finite and not bool((torch.isfinite(s) & (s > 0)).all()):
        raise ValueError(
            f"the Taylor scale s must be finite and > 0, got min {float(s.min()):.3g} "
            f"(rule {scale!r}); is C zero or not positive semi-definite?"
        )
    return s, lam_min, lam_max


def _violation(
    C: Tensor,
    s: Tensor,
    lam_min: Tensor | None,
    lam_max: Tensor | None,
    power_iters: int,
    sync_free: bool = False,
    lam_max_per_matrix: bool = False,
) -> tuple[Tensor, Tensor]:
    """Cheap check of the convergence region. Returns (max_ratio_estimate, violated) per batch.

    With the exact spectrum (eigenvalue rules) both sides are checked exactly: violated iff
    lambda_min/s <= 0 or lambda_max/s >= 2. Otherwise only the upper side is checked (the lower
    side is C being positive definite, a property of C, not of s): first the Gershgorin bound
    certifies ``lambda_max/s < 2`` in O(d^2); where it cannot, a power-iteration estimate (a lower
    bound on lambda_max, so a ratio >= 2 from it is a certain violation) decides. A violation that
    power iteration misses is possible in principle but requires it to under-estimate lambda_max
    by the factor (2 s)/lambda_est. ``sync_free`` skips the shortcut that reads the Gershgorin
    certificate on the host (power iteration then always runs; the verdict is the same).
    ``lam_max_per_matrix``: ``lam_max`` is a power estimate of each matrix's own lambda_max (not
    a batch-wide one). The Gershgorin bound then adds nothing: the estimate never exceeds it, so
    wherever it certifies, ``lam_max / s < 2`` already says so.
    """
    if lam_min is not None:
        ratio = lam_max / s
        return ratio, (lam_min / s <= 0) | (ratio >= 2)
    if lam_max is not None and lam_max_per_matrix:
        ratio = lam_max / s
        return ratio, ratio >= 2
    gersh = gershgorin_upper_bound(C)
    certified = gersh / s < 2
    if lam_max is None:
        if not sync_free and bool(certified.all()):
            return gersh / s, torch.zeros_like(certified)
        lam_max = lambda_max_power(C, power_iters)
    ratio = torch.where(certified, torch.minimum(gersh, lam_max) / s, lam_max / s)
    return ratio, ~certified & (ratio >= 2)


def resolve_taylor_scale(
    C: Tensor,
    scale: str | float | Tensor | RunningScale = "trace",
    *,
    on_violation: OnViolation = "warn",
    power_iters: int = 20,
    safety: float = 1.05,
    margin: float = 0.1,
    check_finite: bool = True,
    _stacklevel: int = 2,
) -> Tensor:
    """The scale s (shape ``C.shape[:-2]``, detached) that :func:`logdet_taylor` uses for symmetric
    C: the rule of :func:`taylor_scale` followed by the convergence check and ``on_violation``
    policy documented in :func:`logdet_taylor` (``check_finite`` as there)."""
    if on_violation not in ("warn", "raise", "clamp", "ignore"):
        raise ValueError(
            f"on_violation must be 'warn', 'raise', 'clamp' or 'ignore', got {on_violation!r}"
        )
    if not 0 < margin < 2:
        raise ValueError(f"margin must lie in (0, 2), got {margin}")
    A = C.detach()
    s, lam_min, lam_max = taylor_scale(
        A, scale, power_iters=power_iters, safety=safety, check_finite=check_finite
    )
    # "power" estimates each matrix; a RunningScale one value for the whole batch
    per_matrix = A.ndim == 2 or (isinstance(scale, str) and scale == "power")

    if on_violation == "clamp" and lam_min is None:
        # Without the spectrum there is nothing to raise about (positive definiteness cannot be
        # seen), so clamping needs no host read of the verdict: s is replaced where violated.
        ratio, violated = _violation(
            A, s, lam_min, lam_max, power_iters, sync_free=not check_finite,
            lam_max_per_matrix=per_matrix,
        )  # fmt: skip
        lam_est = ratio * s  # estimated lambda_max
        s = torch.where(violated, safety * lam_est / (2.0 - margin), s)
    elif on_violation != "ignore":
        ratio, violated = _violation(
            A, s, lam_min, lam_max, power_iters, lam_max_per_matrix=per_matrix
        )
        if bool(violated.any()):
            worst = float(ratio[violated].max()) if bool(violated.any()) else float("nan")
            if isinstance(scale, str):
                rule = scale
            elif isinstance(scale, (int, float)):
                rule = f"{float(scale):g}"
            else:
                rule = type(scale).__name__
            nonpd = lam_min is not None and bool((lam_min <= 0).any())
            what = (
                f"C has a non-positive eigenvalue (lambda_min/s = {float((lam_min / s).min()):.3g}); "
                f"add a ridge"
                if nonpd
                else f"lambda_max/s = {worst:.4g} >= 2 for {int(violated.sum())} of {violated.numel()} "
                f"matrices"
            )
            msg = (
                f"log-det Taylor series outside its convergence region 0 < lambda/s < 2 with "
                f"scale {rule!r}: {what}; the truncated series diverges as the order grows."
            )
            if on_violation == "raise":
                raise ValueError(msg)
            if on_violation == "clamp":
                if nonpd:
                    raise ValueError(msg)
                lam_est = ratio * s  # estimated lambda_max
                s = torch.where(violated, safety * lam_est / (2.0 - margin), s)
            elif rule not in _WARNED:
                _WARNED.add(rule)
                warnings.warn(
                    msg + " Use on_violation='clamp', a larger scale, or scale='max_eig'/'power'.",
                    TaylorConvergenceWarning,
                    stacklevel=_stacklevel,
                )

    return s


def logdet_taylor(
    C: Tensor,
    order: int = 4,
    *,
    scale: str | float | Tensor | RunningScale = "trace",
    ridge: float = 0.0,
    on_violation: OnViolation = "warn",
    power_iters: int = 20,
    safety: float = 1.05,
    margin: float = 0.1,
    float64: bool = False,
    check_finite: bool = True,
) -> Tensor:
    """Truncated Taylor log-determinant ``d log s - sum_{k=1..K} tr((I - C/s)^k) / k``.

    Matrix products only: ``tr(M^k)`` for k <= K is obtained from the powers ``M, ..., M^ceil(K/2)``
    via ``tr(M^a M^b) = sum(M^a * (M^b)')``, i.e. ``ceil(K/2) - 1`` matrix products. The scale is
    detached (see module docstring: gradient ``C^{-1}(I - M^K)``). Batched over leading dims.

    Parameters
    ----------
    C : (..., d, d) symmetric covariance (only its symmetric part is used).
    order : K >= 1, number of series terms.
    scale : rule name ("max_eig", "midrange", "power", "trace"), a positive number or tensor
        (broadcast to the batch shape), or a :class:`RunningScale`. See :func:`taylor_scale`.
    ridge : ``ridge * I`` added to C first.
    on_violation : what to do when the check of the convergence region ``0 < lambda/s < 2`` fails
        (how it is checked: see below).

        - "warn" (default): one :class:`TaylorConvergenceWarning` per scale rule and process,
          naming the offending ratio lambda_max/s; the (possibly divergent) series is returned.
        - "raise": ValueError naming the ratio.
        - "clamp": s is raised to ``safety * lambda_est / (2 - margin)`` on the offending batch
          entries so the estimated max ratio is <= (2 - margin)/safety. A non-positive eigenvalue
          (only detectable by eigenvalue rules) cannot be fixed by a scale: ValueError.
        - "ignore": no check at all (used to study divergence).

        The check: eigenvalue rules ("max_eig", "midrange") know the spectrum exactly. Every other
        rule uses the Gershgorin bound to certify convergence in O(d^2), falling back to
        ``power_iters`` power-iteration steps (the "power" rule and RunningScale reuse the
        estimate they already made). Only the upper side is checked cheaply; positive
        definiteness of C is the caller's job (use a ridge).
    power_iters, safety : power-iteration steps and safety factor for "power" and for the check.
    margin : how far below 2 "clamp" places the max ratio.
    float64 : compute in float64 (returned in C's dtype). Default False: the series is meant to be
        the fast path in the training dtype.
    check_finite : check that C and s are finite (and s > 0) and raise ValueError naming the
        problem (default). Each check reads a device value on the host, a synchronisation on a
        GPU. With False, bad input gives a non-finite result instead of an error, and with
        ``on_violation`` "clamp" or "ignore" and a scale that is not an eigenvalue rule
        ("power", "trace", a number or tensor, a RunningScale in training mode) the call never
        synchronises with the device: "clamp" then replaces s where the check fails without
        reading the verdict on the host (same result).
    """
    if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if on_violation not in ("warn", "raise", "clamp", "ignore"):
        raise ValueError(
            f"on_violation must be 'warn', 'raise', 'clamp' or 'ignore', got {on_violation!r}"
        )
    if not 0 < margin < 2:
        raise ValueError(f"margin must lie in (0, 2), got {margin}")
    C = _as_matrix(C, check_finite=check_finite)
    ridge = _check_ridge(ridge)
    A = _prepare(C, ridge, torch.float64 if float64 else None)
    d = A.shape[-1]
    s = resolve_taylor_scale(
        A,
        scale,
        on_violation=on_violation,
        power_iters=power_iters,
        safety=safety,
        margin=margin,
        check_finite=check_finite,
        _stacklevel=3,
    )
    s = s.to(A.dtype)
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    M = eye - A / s[..., None, None]
    half = (order + 1) // 2
    powers = [M]
    for _ in range(half - 1):
        powers.append(powers[-1] @ M)
    series = _trace(M)
    for k in range(2, order + 1):
        a = k // 2
        b = k - a
        tr_k = (powers[a - 1] * powers[b - 1].mT).sum((-2, -1))
        series = series + tr_k / k
    ld = d * torch.log(s) - series
    return ld.to(C.dtype)


def taylor_gradient_closed_form(C: Tensor, order: int, scale: float | Tensor) -> Tensor:
    """Gradient of the order-K series at fixed s: ``C^{-1} (I - (I - C/s)^K)`` (float64, dense
    inverse; a reference for tests and the order study, not a fast path)."""
    A = _prepare(_as_matrix(C), 0.0, torch.float64)
    s = torch.as_tensor(scale, dtype=torch.float64).expand(A.shape[:-2])[..., None, None]
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    M = eye - A / s
    return torch.linalg.solve(A, eye - torch.linalg.matrix_power(M, order))


# --------------------------------------------------------------------------------------------
# truncation error from the spectrum
# --------------------------------------------------------------------------------------------


def _ratios(eigenvalues, scale) -> tuple[Tensor, Tensor]:
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if lam.ndim < 1:
        raise ValueError(f"eigenvalues must have shape (..., d), got shape {tuple(lam.shape)}")
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("eigenvalues contain NaN or inf")
    if bool((lam <= 0).any()):
        raise ValueError(
            f"eigenvalues must be > 0 (log det undefined), min is {float(lam.min()):.3g}"
        )
    s = torch.as_tensor(scale, dtype=torch.float64)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"scale must be finite and > 0, got {s}")
    return lam, s


def taylor_series_from_eigenvalues(eigenvalues, order: int, scale) -> Tensor:
    """Value of the order-K truncated series computed from the spectrum:
    ``d log s - sum_i sum_{k<=K} (1 - lambda_i/s)^k / k`` (float64, shape ``eigenvalues.shape[:-1]``).
    Equal in exact arithmetic to ``logdet_taylor(C, K, scale=s)`` for C with these eigenvalues."""
    lam, s = _ratios(eigenvalues, scale)
    m = 1.0 - lam / s[..., None] if s.ndim else 1.0 - lam / s
    k = torch.arange(1, order + 1, dtype=torch.float64)
    partial = (m[..., None] ** k / k).sum((-2, -1))
    return lam.shape[-1] * torch.log(s) - partial


def taylor_truncation_error(eigenvalues, order: int, scale) -> Tensor:
    """Signed remainder ``R_K = logdet_taylor_K - logdet_exact`` from the spectrum (float64).

    ``R_K = sum_i sum_{k>K} m_i^k / k = -sum_i [log(1 - m_i) + sum_{k<=K} m_i^k / k]``, with
    ``m_i = 1 - lambda_i/s``. The closed form on the right is valid for any lambda_i > 0 (also
    outside the convergence region, where it grows with K); for ``|m_i| <= 0.9`` the tail is
    summed directly instead (the closed form cancels catastrophically once R_K << |log|).

    eigenvalues : (..., d); scale : scalar or (...,). Returns shape (...).
    """
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be an integer >= 0, got {order!r}")
    lam, s = _ratios(eigenvalues, scale)
    m = 1.0 - lam / (s[..., None] if s.ndim else s)
    k = torch.arange(1, order + 1, dtype=torch.float64)
    partial = (m[..., None] ** k / k).sum(-1)
    closed = -(torch.log1p(-m) + partial)
    # direct tail for |m| <= 0.9: 0.9^400 ~ 5e-19, far below float64 resolution of the sum
    j = torch.arange(order + 1, order + 401, dtype=torch.float64)
    small = m.abs() <= 0.9
    m_small = torch.where(small, m, torch.zeros_like(m))
    tail = (m_small[..., None] ** j / j).sum(-1)
    return torch.where(small, tail, closed).sum(-1)


def _q(scale: float, lambda_min: float, lambda_max: float) -> float:
    if not (scale > 0 and lambda_min > 0 and lambda_max >= lambda_min):
        raise ValueError(
            f"need scale > 0 and 0 < lambda_min <= lambda_max, got scale={scale}, "
            f"lambda_min={lambda_min}, lambda_max={lambda_max}"
        )
    return max(abs(1.0 - lambda_min / scale), abs(1.0 - lambda_max / scale))


def taylor_error_bound(
    order: int, scale: float, lambda_min: float, lambda_max: float, d: int
) -> float:
    """Upper bound on ``|R_K|`` from the spectral interval: ``d q^(K+1) / ((K+1)(1-q))`` with
    ``q = max(|1 - lambda_min/s|, |1 - lambda_max/s|)``; ``inf`` when q >= 1 (no convergence).
    Follows from ``|sum_{k>K} m^k/k| <= q^(K+1)/(K+1) * sum_j q^j``."""
    if order < 0 or d < 1:
        raise ValueError(f"need order >= 0 and d >= 1, got order={order}, d={d}")
    q = _q(float(scale), float(lambda_min), float(lambda_max))
    if q >= 1.0:
        return math.inf
    return d * q ** (order + 1) / ((order + 1) * (1.0 - q))


def order_for_tolerance(
    tol: float,
    scale: float,
    lambda_min: float,
    lambda_max: float,
    d: int,
    max_order: int = 100_000,
) -> int:
    """Smallest K with ``taylor_error_bound(K, ...) <= tol`` (absolute error in nats).

    Raises ValueError if the interval is outside the convergence region or K would exceed
    ``max_order``. Rule of thumb: K ~ log(tol (1-q)/d) / log q, i.e. ~ kappa * log(d/tol) for
    s = lambda_max and condition number kappa.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    q = _q(float(scale), float(lambda_min), float(lambda_max))
    if q >= 1.0:
        raise ValueError(f"q = max|1 - lambda/s| = {q:.4g} >= 1: the series does not converge")
    if q == 0.0:
        return 0
    # log-space estimate, then exact check upwards/downwards
    guess = max(0, int(math.log(tol * (1 - q) / d) / math.log(q)) - 1)
    k = min(guess, max_order)
    while k > 0 and taylor_error_bound(k - 1, scale, lambda_min, lambda_max, d) <= tol:
        k -= 1
    while taylor_error_bound(k, scale, lambda_min, lambda_max, d) > tol:
        k += 1
        if k > max_order:
            raise ValueError(
                f"order needed for tol={tol} exceeds max_order={max_order} (q={q:.6g})"
            )
    return k
