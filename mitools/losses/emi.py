"""EMI: explicit (second-order) mutual-information maximisation between two views.

Source: Chang, Liu, Guo, Wen, "Explicit Mutual Information Maximization for Self-Supervised
Learning" (arXiv 2409.04747). What is known: the objective is the Gaussian (second-order) MI of the
two views' embeddings, ``I = 1/2 [log det C11 + log det C22 - log det C]``; the log-det is replaced
by an eigenvalue-based truncated Taylor series after a rescaling that keeps it convergent, with a
moving average of the eigenvalue scale. UNKNOWN (not recoverable from the paper): the exact loss
equation, the Taylor order and expansion point, the rescaling rule and all hyper-parameters. Every
such choice below is an option, not a claim about the authors' setting.

Conventions (all stated, all tested):

* Covariance. ``Z = [z1, z2]`` (N x 2d). With ``center=True`` (default) the columns are centred by
  the batch mean and ``C = Zc' Zc / (N - 1)`` (the unbiased sample covariance, as ``numpy.cov``);
  with ``center=False`` the uncentred second moment ``Z' Z / N`` is used. Without a ridge the MI is
  invariant to any rescaling of C (the ``d log a`` terms cancel: d + d - 2d = 0), so 1/(N-1) vs 1/N
  does not change the loss; it matters only once a ridge is added, which is in the units of C.
* Ridge. ``ridge`` (>= 0, absolute, in embedding-variance units) is added as ``ridge * I`` to every
  matrix whose log-det is taken (C11, C22, C in the joint form; C, C + D, C - D in the symmetric
  form; these are the blocks of ``C_joint + ridge * I`` after the orthogonal change of basis
  ``[[I, I], [I, -I]] / sqrt 2``, so the two forms agree with the ridge too).
* Exactness. With ``logdet="exact"``, ``ridge=0``, ``covariance="batch"``, the loss is exactly
  ``-I`` where I is the second-order (Gaussian) MI of the batch in nats, i.e.
  ``-mitools.mi.estimators.gaussian_mi(z1, z2)`` (tested).
* EMA covariance (``covariance="ema"``): ``C_t = m * C_{t-1} + (1 - m) * C_batch`` with
  ``m = ema_momentum`` and ``C_{t-1}`` a detached buffer, so the gradient flows ONLY through the
  current batch's contribution ``(1 - m) * C_batch``. The buffer starts at
  ``tr(C_batch0) / (2d) * I`` (a scaled identity; it keeps the first steps full-rank for small
  batches and is forgotten geometrically). The buffer is updated only in training mode.
* Small batches. After centring, the joint 2d x 2d covariance has rank <= N - 1, so without a
  ridge and without EMA the exact MI needs ``N >= 2d + 1`` (joint form) or ``N >= d + 1``
  (symmetric form: C - D and C + D are d x d covariances of N samples); uncentred: ``N >= 2d`` /
  ``N >= d``. Smaller batches raise ValueError saying which batch size or ridge would work.
* Taylor gradients. ``logdet_taylor`` treats its scale s as a constant (detached): the gradient
  is that of the truncated series at fixed s, ``C^{-1}(I - M^K)``. With a data-dependent rule
  ("max_eig", "power", "trace") this is NOT the derivative of the returned value as a function of
  the inputs (s moves with the batch); it is exactly that derivative only for a fixed numeric
  scale (which is what the gradcheck tests use) or a RunningScale between updates.
* The Taylor surrogate is not an MI estimate. A truncated series has no pole, so it is finite
  where the covariance is singular (collapsed or identical views, where the MI is infinite or
  undefined and ``logdet="exact"`` raises) and it does not see a negative eigenvalue below the
  scale; ``on_violation`` checks only the top of the spectrum against the scale. Far from
  convergence (K small for the condition number) its ``mi`` term can be far from the MI, even
  negative. Measure MI with ``logdet="exact"`` or :func:`mitools.mi.estimators.gaussian_mi`.
* Precision. The covariance and log-dets are computed in ``compute_dtype`` (float64 by default)
  with autocast disabled; the returned loss has dtype ``compute_dtype``.

Forms:

* ``form="joint"``: ``I = 1/2 [log det C11 + log det C22 - log det C]`` (Theorem 1).
* ``form="symmetric"``: with ``C = (C11 + C22)/2`` and ``D = (C12 + C21)/2``,
  ``I = log det C - 1/2 log det(C + D) - 1/2 log det(C - D)``; ``C + D = Cov(z1 + z2)/2`` and
  ``C - D = Cov(z1 - z2)/2``. It is the Gaussian MI of the exchangeable (view-swapped) mixture of
  the pair and equals the joint form when C11 = C22 and C12 = C12' (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mitools.logdet import RunningScale, logdet_exact, logdet_taylor
from mitools.losses._common import (
    LazyBuffersMixin,
    check_pair,
    common_dtype,
    detach_terms,
    full_precision,
    maybe_gather,
)

__all__ = ["EMILoss", "joint_covariance", "second_order_mi", "min_batch_size"]

_FORMS = ("joint", "symmetric")
_LOGDETS = ("exact", "taylor")
_COVARIANCES = ("batch", "ema")


def joint_covariance(z1: Tensor, z2: Tensor, *, center: bool = True) -> Tensor:
    """Joint 2d x 2d covariance of ``[z1, z2]`` (N x d each): 1/(N-1) centred or 1/N uncentred."""
    z = torch.cat([z1, z2], dim=1)
    n = z.shape[0]
    if center:
        z = z - z.mean(dim=0, keepdim=True)
        return z.T @ z / (n - 1)
    return z.T @ z / n


def min_batch_size(d: int, *, form: str = "joint", center: bool = True) -> int:
    """Smallest batch for which the exact, ridge-free, batch-covariance MI is defined."""
    dims = 2 * d if form == "joint" else d
    return dims + 1 if center else dims


def second_order_mi(
    C: Tensor, d: int, *, form: str, logdet: Callable[[Tensor, str], Tensor], ridge: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Second-order MI (nats) from a joint 2d x 2d covariance and its log-det terms.

    ``logdet(A, name)`` returns log det A; ``name`` identifies the term (for per-term scales).
    """
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    c11, c22, c12 = C[:d, :d], C[d:, d:], C[:d, d:]
    if form == "joint":
        ld11 = logdet(c11 + ridge * eye, "c11")
        ld22 = logdet(c22 + ridge * eye, "c22")
        ldj = logdet(C + ridge * torch.eye(2 * d, dtype=C.dtype, device=C.device), "joint")
        mi = 0.5 * (ld11 + ld22 - ldj)
        return mi, {"logdet_c11": ld11, "logdet_c22": ld22, "logdet_joint": ldj}
    c = 0.5 * (c11 + c22)
    dd = 0.5 * (c12 + c12.T)
    ldc = logdet(c + ridge * eye, "c")
    ldp = logdet(c + dd + ridge * eye, "c_plus_d")
    ldm = logdet(c - dd + ridge * eye, "c_minus_d")
    mi = ldc - 0.5 * (ldp + ldm)
    return mi, {"logdet_c": ldc, "logdet_c_plus_d": ldp, "logdet_c_minus_d": ldm}


def _term_names(form: str) -> tuple[str, ...]:
    return ("c11", "c22", "joint") if form == "joint" else ("c", "c_plus_d", "c_minus_d")


class EMILoss(LazyBuffersMixin, nn.Module):
    """Negative second-order MI between two views: ``loss = -I(z1; z2)`` (see module docstring).

    Args:
        form: "joint" or "symmetric" (module docstring).
        logdet: "exact" (Cholesky, :func:`mitools.logdet.logdet_exact`) or "taylor"
            (:func:`mitools.logdet.logdet_taylor`, truncated at ``order``).
        order: Taylor order K (``logdet="taylor"`` only).
        scale: Taylor rescaling s: "max_eig", "trace", "power", a float, or "running" (one
            :class:`mitools.logdet.RunningScale` EMA per log-det term, ``running_momentum``).
        ridge: absolute ridge added to every log-det argument (>= 0).
        covariance: "batch" or "ema" (gradient only through the current batch's share).
        ema_momentum: m in ``C_t = m C_{t-1} + (1 - m) C_batch``.
        center: centre by the batch mean (1/(N-1)) or use the uncentred moment (1/N).
        compute_dtype: torch.float64 (default) or torch.float32.
        gather_distributed: gather all ranks' embeddings (see :mod:`mitools.distributed`).
        on_violation: Taylor convergence-violation policy passed to ``logdet_taylor``.
        running_momentum, running_power_iters, running_warm_iters: the RunningScale options
            (``momentum``, ``power_iters``, ``warm_iters``; see that class).
        check_finite: check inputs (and, with ``logdet="taylor"``, each matrix and scale) for
            NaN/inf, raising ValueError; each check is a device sync. With False a bad input
            gives a non-finite loss, and the Taylor path with a "running", "power" or numeric
            scale and ``on_violation`` "clamp" or "ignore" runs without any host sync (what the
            trainer uses: it checks the loss itself).

    After each forward, ``last_terms`` holds (detached) ``loss``, ``mi`` (nats; the Taylor
    surrogate of the MI when ``logdet="taylor"``) and the three log-det terms.
    """

    def __init__(
        self,
        form: str = "joint",
        logdet: str = "exact",
        order: int = 4,
        scale: str | float = "max_eig",
        ridge: float = 0.0,
        covariance: str = "batch",
        ema_momentum: float = 0.9,
        center: bool = True,
        compute_dtype: torch.dtype = torch.float64,
        gather_distributed: bool = False,
        on_violation: str = "warn",
        running_momentum: float = 0.99,
        running_power_iters: int = 20,
        running_warm_iters: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
        if logdet not in _LOGDETS:
            raise ValueError(f"logdet must be one of {_LOGDETS}, got {logdet!r}")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        if not (isinstance(order, int) and order >= 1):
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        if not ridge >= 0.0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum!r}")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}"
            )
        self.form = form
        self.logdet = logdet
        self.order = order
        self.scale = scale
        self.ridge = float(ridge)
        self.covariance = covariance
        self.ema_momentum = float(ema_momentum)
        self.center = center
        self.compute_dtype = compute_dtype
        self.gather_distributed = gather_distributed
        self.on_violation = on_violation
        self.check_finite = check_finite
        self.running_scales: nn.ModuleDict | None = None
        if logdet == "taylor" and scale == "running":
            self.running_scales = nn.ModuleDict(
                {
                    name: RunningScale(
                        momentum=running_momentum,
                        power_iters=running_power_iters,
                        warm_iters=running_warm_iters,
                    )
                    for name in _term_names(form)
                }
            )
        self.register_buffer("ema_cov", torch.empty(0, dtype=torch.float64))
        self.last_terms: dict[str, float | Tensor] = {}

    def _logdet(self, A: Tensor, name: str) -> Tensor:
        if self.logdet == "exact":
            return logdet_exact(A, float64=self.compute_dtype == torch.float64)
        scale = self.running_scales[name] if self.running_scales is not None else self.scale
        return logdet_taylor(
            A,
            self.order,
            scale=scale,
            on_violation=self.on_violation,
            float64=self.compute_dtype == torch.float64,
            check_finite=self.check_finite,
        )

    def _check_batch(self, n: int, d: int) -> None:
        need = min_batch_size(d, form=self.form, center=self.center)
        if n < need:
            dims = 2 * d if self.form == "joint" else d
            raise ValueError(
                f"batch too small for the exact {self.form} EMI covariance: N={n} samples, "
                f"{dims} covariance dimensions (rank <= N{' - 1' if self.center else ''}); "
                f"use a (global) batch of N >= {need}, or ridge > 0 (e.g. ridge=1e-4 times the "
                f"mean embedding variance), or covariance='ema'"
            )

    def _ema(self, c_batch: Tensor) -> Tensor:
        m = self.ema_momentum
        if self.ema_cov.numel() == 0:
            dim = c_batch.shape[0]
            init = torch.diagonal(c_batch.detach()).mean() * torch.eye(
                dim, dtype=c_batch.dtype, device=c_batch.device
            )
            prev = init
        else:
            prev = self.ema_cov.to(dtype=c_batch.dtype, device=c_batch.device)
        C = m * prev + (1.0 - m) * c_batch
        if self.training:
            self.ema_cov = C.detach().to(torch.float64)
        return C

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        n, d = z1.shape
        if self.ema_cov.numel() and self.ema_cov.shape[0] != 2 * d:
            raise ValueError(f"EMA covariance is {tuple(self.ema_cov.shape)} but inputs have d={d}")
        a = z1.to(self.compute_dtype)  # autocast is off here (full_precision)
        b = z2.to(self.compute_dtype)
        c_batch = joint_covariance(a, b, center=self.center)
        if self.covariance == "ema":
            C = self._ema(c_batch)
        else:
            if self.ridge == 0.0:
                self._check_batch(n, d)
            C = c_batch
        mi, terms = second_order_mi(C, d, form=self.form, logdet=self._logdet, ridge=self.ridge)
        loss = -mi
        self.last_terms = detach_terms({"loss": loss, "mi": mi, **terms})
        return loss

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, logdet={self.logdet!r}, order={self.order}, scale={self.scale!r}, "
            f"ridge={self.ridge}, covariance={self.covariance!r}, center={self.center}"
        )
