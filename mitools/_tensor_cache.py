"""A small cache for constant tensors that hot paths would otherwise rebuild on every call.

Building a constant (a mask, a start vector) costs kernel launches, or a host-to-device copy that
synchronises with a GPU, on every training step. Caching it is only safe for a plain tensor:

* one made under ``torch.inference_mode`` cannot later be saved for backward, so entries are
  built with inference mode off;
* one made inside a ``torch.func`` transform (``grad``, ``vmap``, as in the Hessian code) is a
  wrapper tied to that transform's level and breaks once the transform has returned, so such a
  result is returned but not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor


def _is_plain(t: Tensor) -> bool:
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and not is_wrapped(t)


class TensorCache:
    """At most ``maxsize`` tensors by key, least recently used evicted first."""

    def __init__(self, maxsize: int = 16) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Tensor]) -> Tensor:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        with torch.inference_mode(False):
            value = build()
        if _is_plain(value):
            self._entries[key] = value
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
