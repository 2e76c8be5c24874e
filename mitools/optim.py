"""Optimisers and learning-rate schedules for SSL pre-training.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks")
    For a parameter tensor w with gradient g, weight decay wd and trust coefficient eta::

        trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)      (1 if ||w|| = 0 or ||g|| = 0)
        d     = trust * (g + wd * w)
        v     <- momentum * v + d
        w     <- w - lr * v

    as in SimCLR, BYOL and solo-learn. Bias and normalisation (BN) parameters are EXCLUDED from
    both the weight decay and the trust ratio (they get plain SGD with momentum):
    :func:`param_groups_lars` makes the two groups (``lars_adaptation`` False, ``weight_decay``
    0 for the second). Trust coefficient: ``eta = 1e-3`` in You et al., SimCLR and BYOL (default
    here); solo-learn's CIFAR configs use ``eta = 0.02`` with ``clip_lr=True`` (LARC clipping:
    ``trust <- min(trust / lr, 1)``, so the effective step never exceeds the SGD one).
    A different variant (Barlow Twins / VICReg code) divides by the norm of the decayed update,
    ``eta ||w|| / ||g + wd w||``; it is not implemented.

Learning rate
    :func:`warmup_cosine`: linear warm-up then half-cosine decay; :class:`WarmupCosineLR` applies it
    per step to every parameter group (state_dict / load_state_dict for checkpoints).
    :func:`scaled_lr`: the linear scaling rule ``lr = base_lr * batch_size / 256`` (Goyal et al.
    2017, used by SimCLR/BYOL/solo-learn for LARS), or ``base_lr * sqrt(batch_size)``
    (SimCLR's square-root rule for small batches, e.g. 0.075 * sqrt(B)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "LARS",
    "OPTIMIZERS",
    "WarmupCosineLR",
    "build_optimizer",
    "param_groups_lars",
    "scaled_lr",
    "warmup_cosine",
]

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with momentum (see module docstring for the update).

    Per-group options: ``lr``, ``momentum``, ``weight_decay``, ``eta``, ``eps``, ``clip_lr`` and
    ``lars_adaptation`` (False: plain SGD-momentum step for that group, still with its own
    ``weight_decay``, which :func:`param_groups_lars` sets to 0).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        eps: float = 1e-8,
        clip_lr: bool = False,
        lars_adaptation: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"eta (trust coefficient) must be > 0, got {eta}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=eps,
            clip_lr=clip_lr,
            lars_adaptation=lars_adaptation,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                d = g.add(p, alpha=wd) if wd != 0 else g.clone()
                if group["lars_adaptation"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    if group["clip_lr"] and lr > 0:
                        trust = torch.clamp(trust / lr, max=1.0)
                    d.mul_(trust)
                if mom != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(mom).add_(d)
                    d = buf
                p.add_(d, alpha=-lr)
        return loss


def _is_no_decay(name: str, param: torch.Tensor, norm_param_names: set[str]) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name == "bias" or name in norm_param_names


def param_groups_lars(
    model: nn.Module, weight_decay: float, lr: float | None = None
) -> list[dict[str, Any]]:
    """Two groups: weights (decay + LARS adaptation) and biases / norm params (neither).

    A parameter is excluded when ``ndim <= 1`` (all BN/LayerNorm/GroupNorm weights and biases and
    every Linear/Conv bias), when its name ends in ``bias``, or when it belongs to a normalisation
    module. Frozen parameters (``requires_grad=False``) are left out. ``lr``, when given, is
    written into both groups. Empty groups are dropped.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    norm_param_names = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules()
        if isinstance(mod, norm_types)
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if _is_no_decay(name, p, norm_param_names) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_adaptation": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adaptation": False},
    ]
    if lr is not None:
        for g in groups:
            g["lr"] = lr
    return [g for g in groups if g["params"]]


def build_optimizer(
    name: Literal["lars", "sgd", "adamw"],
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    *,
    eta: float = 1e-3,
    clip_lr: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    exclude_bias_and_norm: bool = True,
) -> torch.optim.Optimizer:
    """Optimiser by name over ``model``'s trainable parameters.

    With ``exclude_bias_and_norm`` (default) biases and norm parameters get no weight decay for
    every optimiser, and no LARS adaptation for ``lars``; otherwise every parameter is treated
    alike. ``momentum`` is ignored by AdamW (use ``betas``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if exclude_bias_and_norm:
        groups: list[dict[str, Any]] = param_groups_lars(model, weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": weight_decay, "lars_adaptation": True}]
    if not groups:
        raise ValueError("model has no trainable parameters")
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=eta, clip_lr=clip_lr)
    for g in groups:
        g.pop("lars_adaptation")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def scaled_lr(
    base_lr: float,
    batch_size: int,
    rule: Literal["linear", "sqrt"] = "linear",
    reference: int = 256,
) -> float:
    """Learning rate for a batch size: ``base_lr * B / reference`` or ``base_lr * sqrt(B)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rule == "linear":
        return base_lr * batch_size / reference
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(f"rule must be 'linear' or 'sqrt', got {rule!r}")


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    final_lr: float = 0.0,
    warmup_start_lr: float = 0.0,
) -> float:
    """Linear warm-up then half-cosine decay.

    ``step < W``:  ``start + (base - start) * step / W``;
    ``W <= step <= T``: ``final + (base - final) * (1 + cos(pi (step - W) / (T - W))) / 2``;
    ``step > T``: ``final``. So lr(0) = start, lr(W) = base, lr((W + T)/2) = (base + final)/2,
    lr(T) = final.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    if step >= total_steps:
        return final_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR:
    """Per-step :func:`warmup_cosine` for every parameter group.

    Each group's base lr is its ``lr`` when the scheduler is created (stored as
    ``group["initial_lr"]``), so groups with different rates keep their ratio; the final and
    warm-up start rates are fractions of it. The lr for step 0 is set at construction; call
    :meth:`step` after each ``optimizer.step()``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        final_lr_ratio: float = 0.0,
        warmup_start_ratio: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_lr_ratio = float(final_lr_ratio)
        self.warmup_start_ratio = float(warmup_start_ratio)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        warmup_cosine(0, self.total_steps, self.warmup_steps, 1.0)  # validates the arguments
        self._apply()

    def lr_at(self, step: int) -> list[float]:
        return [
            warmup_cosine(
                step,
                self.total_steps,
                self.warmup_steps,
                base,
                final_lr=base * self.final_lr_ratio,
                warmup_start_lr=base * self.warmup_start_ratio,
            )
            for base in self.base_lrs
        ]

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step), strict=True):
            g["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr_ratio": self.final_lr_ratio,
            "warmup_start_ratio": self.warmup_start_ratio,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.final_lr_ratio = float(state["final_lr_ratio"])
        self.warmup_start_ratio = float(state["warmup_start_ratio"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
