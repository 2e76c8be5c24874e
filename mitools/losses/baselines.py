"""Baseline SSL losses with the common interface ``forward(z1, z2) -> scalar`` and ``last_terms``.

SimCLR (NT-Xent), Barlow Twins, VICReg and the negative cosine wrap lightly 1.6's losses
(imported lazily in the constructors: ``import lightly.loss`` pulls in torchvision, ~4 s); BYOL-style negative cosine,
CorInfoMax and MEC are implemented here from their official code (cited per class).

Distributed semantics. With ``gather_distributed=True`` every batch-coupled loss gathers all
ranks' embeddings with :func:`mitools.distributed.gather_with_grad` and evaluates the loss of the
global batch on every rank, then calls the lightly loss WITHOUT its own ``gather_distributed``.
Reason: lightly's Barlow Twins standardises each rank's batch with that rank's statistics before
summing cross-correlations, and lightly's NT-Xent / VICReg use rank-local terms, so their values
differ from the single-process loss on the concatenated batch. Gathering first makes the value
identical on every rank and equal to the single-process one; gradients follow the convention in
:mod:`mitools.distributed` (DDP's averaging restores the single-process gradient). The price is
that pairwise losses (NT-Xent) recompute the global similarity matrix on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitools.losses._common import (
    LazyBuffersMixin,
    check_nonnegative,
    check_pair,
    check_positive,
    common_dtype,
    detach_terms,
    full_precision,
    maybe_gather,
)

__all__ = [
    "SimCLRLoss",
    "BarlowTwinsLoss",
    "VICRegLoss",
    "BYOLLoss",
    "CorInfoMaxLoss",
    "MECLoss",
    "mec_lamda_inv",
]


class SimCLRLoss(nn.Module):
    """NT-Xent (SimCLR) loss via ``lightly.loss.NTXentLoss`` (no memory bank).

    For each of the 2N normalised embeddings, cross-entropy of its positive against the 2N - 2
    other embeddings (all with logit cos/temperature), averaged over the 2N anchors.
    ``last_terms["infonce_bound"] = log(2N - 1) - loss``: the InfoNCE lower bound on the MI (nats)
    with K = 2N - 1 candidates per anchor (a bound, and capped at log(2N - 1)).
    """

    def __init__(
        self, temperature: float = 0.5, gather_distributed: bool = False, check_finite: bool = True
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        from lightly.loss import NTXentLoss as _LightlyNTXent  # lazy: lightly imports torchvision

        self._loss = _LightlyNTXent(temperature=temperature, gather_distributed=False)
        self.last_terms: dict[str, float | Tensor] = {}

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        loss = self._loss(z1, z2)
        n = z1.shape[0]
        self.last_terms = detach_terms({"loss": loss, "infonce_bound": math.log(2 * n - 1) - loss})
        return loss


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins via ``lightly.loss.BarlowTwinsLoss``.

    Each view standardised per dimension over the batch (biased variance, as BatchNorm in
    training mode), ``c = z1n' z2n / N``,
    ``loss = scale_loss * (sum_i (1 - c_ii)^2 + lambda sum_{i!=j} c_ij^2)``. ``scale_loss``
    (default 1, the paper's loss) is solo-learn's factor (0.1 in its CIFAR recipe); the
    ``on_diag`` / ``off_diag`` terms in ``last_terms`` are unscaled.
    """

    def __init__(
        self,
        lambda_param: float = 5e-3,
        gather_distributed: bool = False,
        check_finite: bool = True,
        scale_loss: float = 1.0,
    ) -> None:
        super().__init__()
        check_nonnegative("lambda_param", lambda_param)
        check_positive("scale_loss", scale_loss)
        self.lambda_param = float(lambda_param)
        self.scale_loss = float(scale_loss)
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        from lightly.loss import BarlowTwinsLoss as _LightlyBarlowTwins

        self._loss = _LightlyBarlowTwins(lambda_param=lambda_param, gather_distributed=False)
        self.last_terms: dict[str, float | Tensor] = {}

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        loss = self.scale_loss * self._loss(z1, z2)
        with torch.no_grad():
            n = z1.shape[0]
            a = F.batch_norm(z1, None, None, training=True)
            b = F.batch_norm(z2, None, None, training=True)
            c = a.T @ b / n
            on = (torch.diagonal(c) - 1).pow(2).sum()
            off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        self.last_terms = detach_terms({"loss": loss, "on_diag": on, "off_diag": off})
        return loss


class VICRegLoss(nn.Module):
    """VICReg via ``lightly.loss.VICRegLoss``.

    ``loss = lambda * MSE(z1, z2) + mu * 1/2 [v(z1) + v(z2)] + nu * [c(z1) + c(z2)]`` with
    ``v(z) = mean_j relu(1 - sqrt(Var_j(z) + eps))`` (unbiased variance) and
    ``c(z) = sum_{i != j} Cov(z)_ij^2 / d`` (1/(N-1) covariance). Defaults 25, 25, 1, eps=1e-4.
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (
            ("lambda_param", lambda_param),
            ("mu_param", mu_param),
            ("nu_param", nu_param),
        ):
            check_nonnegative(name, v)
        check_positive("eps", eps)
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.eps = eps
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        from lightly.loss import VICRegLoss as _LightlyVICReg

        self._loss = _LightlyVICReg(
            lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param, eps=eps
        )
        self.last_terms: dict[str, float | Tensor] = {}

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        loss = self._loss(z1, z2)
        from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss

        with torch.no_grad():
            inv = invariance_loss(z1, z2)
            var = 0.5 * (variance_loss(z1, self.eps) + variance_loss(z2, self.eps))
            cov = covariance_loss(z1) + covariance_loss(z2)
        self.last_terms = detach_terms(
            {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}
        )
        return loss


class BYOLLoss(nn.Module):
    """Symmetrised negative cosine (BYOL / SimSiam style) with an optional predictor hook.

    ``loss = 1/2 [-cos(p(z1), sg(z2)) - cos(p(z2), sg(z1))]`` averaged over the batch, with
    ``p = predictor`` (identity when None) applied to the online branch and ``sg`` a stop-gradient
    on the target branch. ``stop_gradient`` defaults to True with a predictor and False without
    (then the loss is a pure alignment loss, which collapses; kept as the collapse control).
    In BYOL proper the targets come from a momentum encoder: pass its outputs as z1, z2 of the
    target call yourself, or use ``forward(z1, z2, target1, target2)``. The predictor's parameters
    belong to this module: add them to the optimiser. Not batch-coupled (unless the predictor
    holds BatchNorm), so there is no gather: each rank returns its local mean, whose average over
    ranks is the global loss.
    """

    def __init__(
        self,
        predictor: nn.Module | None = None,
        stop_gradient: bool | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.stop_gradient = (predictor is not None) if stop_gradient is None else stop_gradient
        self.check_finite = check_finite
        from lightly.loss import NegativeCosineSimilarity

        self._negcos = NegativeCosineSimilarity(dim=1)
        self.last_terms: dict[str, float | Tensor] = {}

    @full_precision
    def forward(
        self, z1: Tensor, z2: Tensor, target1: Tensor | None = None, target2: Tensor | None = None
    ) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite, min_batch=1)
        z1, z2 = common_dtype(z1, z2)
        t1 = z1 if target1 is None else target1
        t2 = z2 if target2 is None else target2
        if self.stop_gradient:
            t1, t2 = t1.detach(), t2.detach()
        p1 = z1 if self.predictor is None else self.predictor(z1)
        p2 = z2 if self.predictor is None else self.predictor(z2)
        loss = 0.5 * (self._negcos(p1, t2) + self._negcos(p2, t1))
        self.last_terms = detach_terms({"loss": loss, "cos": -loss})
        return loss


class CorInfoMaxLoss(LazyBuffersMixin, nn.Module):
    """CorInfoMax (Ozsoy et al., NeurIPS 2022), following the official code
    (github.com/serdarozsoy/corinfomax-ssl, ``cifars-tiny/loss.py`` and ``pretrain_base.py``).

    Per branch k in {1, 2}, with forgetting factors ``la_mu``, ``la_R`` (weights of the OLD state):

        mu_k = la_mu * mu_k_prev + (1 - la_mu) * mean(z_k)
        R_k  = la_R * R_k_prev + (1 - la_R) * (z_k - mu_k)'(z_k - mu_k) / N
        cov_loss = -(log det(R_1 + eps I) + log det(R_2 + eps I)) / d      (exact, float64)
        loss = sim_loss_weight * MSE(z1, z2) + cov_loss_weight * cov_loss

    Note the official defaults ``la_R = la_mu = 0.01`` give the CURRENT batch weight 0.99. The
    previous state is detached (gradient through the current batch only, including through mu_k);
    states start at ``R_ini * I`` and 0 and are updated only in training mode. Official CIFAR
    defaults: sim_loss_weight 500, cov_loss_weight 1, R_ini 1, eps (R_eps_weight) 1e-6 (the class
    default in their loss file is 1e-8). ``last_terms["mi"]`` is not reported: the log-det is an
    entropy-like term of each branch, not an MI estimate.
    """

    def __init__(
        self,
        sim_loss_weight: float = 500.0,
        cov_loss_weight: float = 1.0,
        la_R: float = 0.01,
        la_mu: float = 0.01,
        R_ini: float = 1.0,
        R_eps_weight: float = 1e-6,
        gather_distributed: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("la_R", la_R), ("la_mu", la_mu)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        for name, v in (
            ("sim_loss_weight", sim_loss_weight),
            ("cov_loss_weight", cov_loss_weight),
            ("R_ini", R_ini),
            ("R_eps_weight", R_eps_weight),
        ):
            check_nonnegative(name, v)
        self.sim_loss_weight, self.cov_loss_weight = sim_loss_weight, cov_loss_weight
        self.la_R, self.la_mu, self.R_ini, self.R_eps_weight = la_R, la_mu, R_ini, R_eps_weight
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        for k in (1, 2):
            self.register_buffer(f"R{k}", torch.empty(0, dtype=torch.float64))
            self.register_buffer(f"mu{k}", torch.empty(0, dtype=torch.float64))
        self.last_terms: dict[str, float | Tensor] = {}

    def _branch(self, z: Tensor, k: int) -> Tensor:
        n, d = z.shape
        R_prev, mu_prev = getattr(self, f"R{k}"), getattr(self, f"mu{k}")
        if R_prev.numel() == 0:
            R_prev = self.R_ini * torch.eye(d, dtype=torch.float64, device=z.device)
            mu_prev = torch.zeros(d, dtype=torch.float64, device=z.device)
        mu = self.la_mu * mu_prev + (1 - self.la_mu) * z.mean(0)
        zc = z - mu
        R = self.la_R * R_prev + (1 - self.la_R) * (zc.T @ zc) / n
        if self.training:
            setattr(self, f"R{k}", R.detach())
            setattr(self, f"mu{k}", mu.detach())
        eye = torch.eye(d, dtype=torch.float64, device=z.device)
        return torch.linalg.cholesky(R + self.R_eps_weight * eye).diagonal().log().sum() * 2

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        d = z1.shape[1]
        sim = F.mse_loss(z1, z2)
        ld1 = self._branch(z1.double(), 1)  # autocast is off here (full_precision)
        ld2 = self._branch(z2.double(), 2)
        cov = -(ld1 + ld2) / d
        loss = self.sim_loss_weight * sim.double() + self.cov_loss_weight * cov
        self.last_terms = detach_terms(
            {"loss": loss, "invariance": sim, "covariance": cov, "logdet_r1": ld1, "logdet_r2": ld2}
        )
        return loss


def mec_lamda_inv(step: int, warmup_steps: int, lamda: float) -> float:
    """MEC's warm-up of 1/lambda (official ``lamda_scheduler``): linear from 8/lambda to 1/lambda
    over ``warmup_steps`` (numpy.linspace endpoints), then constant 1/lambda. A smaller lambda early
    keeps ``||lambda Z1' Z2|| < 1`` so the Taylor series of log det(I + .) converges."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0 / lamda
    frac = step / (warmup_steps - 1) if warmup_steps > 1 else 1.0
    return 8.0 / lamda + frac * (1.0 / lamda - 8.0 / lamda)


class MECLoss(nn.Module):
    """Maximum Entropy Coding (Liu et al., NeurIPS 2022), following the official code
    (github.com/xinliu20/MEC, ``main_pretrain.py: loss_func``).

    With rows L2-normalised, m the (global) batch size, d the dimension,
    ``lambda = d / (m * eps)`` (eps = 64 in the official code: "square of the upper bound of the
    expected decoding error") and ``mu = (m + d)/2``,

        T(A, B) = tr sum_{k=1}^{order} (-1)^{k+1} (lambda A B')^k / k   (~ log det(I + lambda A'B))
        loss = -lamda_inv * [T(t1, z2) + T(t2, z1)] / (2 m),   lamda_inv = 1/lambda by default

    The official pairing is (teacher view 1, online+predictor view 2) and vice versa, teacher
    detached: pass ``target1, target2`` to ``forward`` for that; without targets both views carry
    gradient (``T(z1, z2) = T(z2, z1)`` since the traces of transposes agree). The trace is taken
    on the smaller of the m x m (``A B'``) and d x d (``A' B``) products: equal by
    ``tr((A B')^k) = tr((A' B)^k)``. ``lamda_inv`` can be set each step (warm-up:
    :func:`mec_lamda_inv`, official 8/lambda -> 1/lambda over 10 epochs), None means 1/lambda.
    ``last_terms["mec"] = mu * [T + T]/(2 m)``: the official "per-sample coding length" log.
    """

    def __init__(
        self,
        eps: float = 64.0,
        order: int = 4,
        lamda_inv: float | None = None,
        gather_distributed: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(order, int) and order >= 1):
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        check_positive("eps", eps)
        if lamda_inv is not None:
            check_positive("lamda_inv", lamda_inv)
        self.eps, self.order, self.lamda_inv = eps, order, lamda_inv
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        self.last_terms: dict[str, float | Tensor] = {}

    def _trace_series(self, a: Tensor, b: Tensor, lamda: float) -> Tensor:
        c = lamda * (a @ b.T if a.shape[0] <= a.shape[1] else a.T @ b)
        power = c
        total = torch.trace(c)
        for k in range(2, self.order + 1):
            power = power @ c
            total = total + (-1) ** (k + 1) * torch.trace(power) / k
        return total

    @full_precision
    def forward(
        self, z1: Tensor, z2: Tensor, target1: Tensor | None = None, target2: Tensor | None = None
    ) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        if target1 is not None and target2 is not None:
            t1, t2 = maybe_gather(
                target1.detach(), target2.detach(), self.gather_distributed, self.check_finite
            )
        elif target1 is None and target2 is None:
            t1, t2 = z1, z2
        else:
            raise ValueError("give both target1 and target2, or neither")
        z1, t1 = common_dtype(z1, t1)
        z2, t2 = common_dtype(z2, t2)
        m, d = z1.shape
        lamda = d / (m * self.eps)
        lamda_inv = 1.0 / lamda if self.lamda_inv is None else self.lamda_inv
        z1n, z2n = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        t1n, t2n = F.normalize(t1, dim=1), F.normalize(t2, dim=1)
        lam_eff = 1.0 / lamda_inv
        mec = (
            (self._trace_series(t1n, z2n, lam_eff) + self._trace_series(t2n, z1n, lam_eff))
            * 0.5
            / m
        )
        loss = -mec * lamda_inv
        self.last_terms = detach_terms(
            {"loss": loss, "mec": mec * (m + d) / 2, "lamda_inv": lamda_inv}
        )
        return loss
