"""Minimal torch.distributed helpers for batch-coupled losses.

Gradient convention (read this before using ``gather_distributed=True`` in a loss):

Every batch-coupled loss in :mod:`mitools.losses` gathers the embeddings of all ranks with
:func:`gather_with_grad` and computes the loss of the *global* batch on every rank, so every rank
returns the same value ``L`` (the value one process would get with the concatenated batch).
On backward, the gather sums the gradient that each rank computes for a slice over all ranks,
so rank ``r`` receives ``world_size * dL/dz_r`` for its local embeddings ``z_r``.
DistributedDataParallel then *averages* parameter gradients over ranks:
``(1/W) * sum_r (W * dL/dz_r) dz_r/dtheta = dL/dtheta``, which is exactly the single-process
gradient of the global loss. No manual rescaling is needed (and none must be added).

All ranks must hold the same number of samples (``all_gather`` needs equal shapes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "world_size", "rank", "is_distributed", "all_reduce_mean"]


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each slice's gradient over ranks and keeps this rank's.

    Same semantics as ``lightly.utils.dist.GatherLayer`` (and solo-learn's / MEC's GatherLayer);
    reimplemented here so the core toolkit does not depend on lightly.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.local_size = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather_with_grad(t: torch.Tensor, *, check_shapes: bool = False) -> torch.Tensor:
    """Concatenate ``t`` (shape ``(n, ...)``) from all ranks along dim 0, rank order, with gradient.

    Identity when not distributed or world size 1. The backward pass all-reduces (sums) the
    incoming gradient and returns this rank's slice: see the module docstring for why this,
    combined with DDP's gradient averaging, reproduces the single-process gradient.

    ``check_shapes``: first compare the ranks' shapes (one extra small collective and a host
    read) and raise the same ValueError on every rank when they differ; unchecked, unequal
    shapes abort the processes inside gloo/NCCL. The losses check when their ``check_finite``
    is on (the trainer, which always gives ranks equal batches, turns it off).
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return t
    if t.ndim == 0:
        raise ValueError("gather_with_grad needs a tensor with a batch dimension, got a scalar")
    if check_shapes:
        shapes: list = [None] * dist.get_world_size()
        dist.all_gather_object(shapes, tuple(t.shape))
        if len(set(shapes)) > 1:
            seen = ", ".join(f"rank {r}: {tuple(s)}" for r, s in enumerate(shapes))
            raise ValueError(
                f"gather_with_grad: the ranks hold different shapes ({seen}); all_gather needs "
                "the same per-rank batch on every rank (e.g. drop_last=True)"
            )
    return _AllGatherWithGrad.apply(t)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a detached tensor (for logging); identity when not distributed."""
    t = t.detach().clone()
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t
