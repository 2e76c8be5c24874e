"""Which ATen operators a piece of code runs: a proxy for GPU launch overhead and host syncs
that can be measured on any device, the CPU included.

At small batch sizes a CUDA training step is bound by the host: every ATen operator costs
Python and dispatcher time plus (usually) one kernel launch, and an operator that reads a device
value on the host (``.item()``, ``bool(t)``, ``nonzero``, boolean-mask indexing) drains the
launch queue. Both show up in the operator trace, whatever the device, so tests can assert that
a hot path is free of host synchronisation and benchmarks can report operator counts where no
GPU is available.

    with OpCounter() as ops:
        loss_fn(z1, z2).backward()
    assert not ops.syncs, ops.syncs

Only top-level ATen calls are seen (operators that a composite operator runs inside its kernel
are not dispatched through Python again), which matches what the launch queue sees from the
host. A host-to-device copy of a CPU tensor (``tensor.to("cuda")``) also synchronises on CUDA
but is an ordinary ``_to_copy`` on the CPU; code that should be sync-free must not build tensors
on the host in its hot path, which :data:`HOST_FACTORY_OPS` helps to spot.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "SYNC_OPS", "MASK_INDEX_OPS", "VIEW_OPS", "HOST_FACTORY_OPS"]

#: Operators that read device data on the host (a device synchronisation on CUDA), or whose
#: output shape depends on device data (so the host must wait for it).
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), float(t), bool(t), int(t)
        "item",
        "is_nonzero",  # bool(t) on one element
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
    }
)

#: Indexing operators: a synchronisation when an index is a boolean mask (it runs ``nonzero``),
#: not with integer indices. :class:`OpCounter` tells the two apart.
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})

#: Operators that only change a tensor's metadata (no kernel launch).
VIEW_OPS = frozenset(
    {
        "alias", "as_strided", "detach", "expand", "permute", "reshape", "select", "slice",
        "split", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view", "_unsafe_view",
        "diagonal", "view_as_real", "view_as_complex", "unflatten", "narrow",
    }
)  # fmt: skip

#: Operators that materialise host data as a tensor (``torch.tensor``, a Python list): on CUDA
#: they are followed by a host-to-device copy.
HOST_FACTORY_OPS = frozenset({"lift_fresh", "lift_fresh_copy"})


def _has_mask_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while the context is active.

    Attributes: ``counts`` (operator name -> calls); ``syncs`` (name -> calls of the operators
    that synchronise: :data:`SYNC_OPS`, and :data:`MASK_INDEX_OPS` with a boolean-mask index);
    properties ``total`` and ``launches`` (calls that are not views).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if name in SYNC_OPS or (name in MASK_INDEX_OPS and _has_mask_index(args)):
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        return sum(n for name, n in self.counts.items() if name not in VIEW_OPS)

    def count(self, names) -> int:
        """Calls of any operator in ``names``."""
        return sum(self.counts[name] for name in names)
