"""Freeze one batch of augmented view pairs so every Hessian in a comparison sees the same data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["freeze_views"]


def _stack_items(data: Any, idx: list[int]) -> Tensor:
    items = []
    for i in idx:
        item = data[i]
        if isinstance(item, tuple | list):
            item = item[0]  # (image, label)
        items.append(torch.as_tensor(item))
    return torch.stack(items)


def freeze_views(
    data: Any,
    n: int,
    augment: Callable[..., tuple[Tensor, Tensor]] | None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` distinct samples and one augmented pair per sample, deterministically.

    Args:
        data: an (N, C, H, W) tensor or an indexable dataset returning images or (image, label).
        n: number of samples (without replacement, ``torch.randperm`` with ``seed``).
        augment: ``augment(x, generator=g) -> (view1, view2)`` on the stacked batch (e.g.
            :class:`mitools.data.BatchAugment`), or None for identical views ``x1 = x2 = x``.
        seed: seeds the index draw and the augmentation's generator (CPU).
        device: where the returned views live (default: CPU).

    Returns detached, contiguous ``(x1, x2)`` tensors; the same arguments give the same views.
    """
    size = int(data.shape[0]) if isinstance(data, Tensor) else len(data)
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}] (the data size), got {n}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(size, generator=g)[:n].tolist()
    x = data[idx] if isinstance(data, Tensor) else _stack_items(data, idx)
    if augment is None:
        x1, x2 = x, x.clone()
    else:
        with torch.no_grad():
            x1, x2 = augment(x, generator=g)
    if not (torch.isfinite(x1).all() and torch.isfinite(x2).all()):
        raise ValueError("augmented views contain non-finite values")
    return x1.detach().contiguous().to(device or "cpu"), x2.detach().contiguous().to(
        device or "cpu"
    )
