"""Module state buffers whose shape is only known at the first call."""

from __future__ import annotations

import torch
from torch import nn


class LazyBuffersMixin(nn.Module):
    """For modules whose state buffers start as 0-element placeholders and take their shape at
    the first training step (EMA covariances, the warm-start vector of a RunningScale):
    ``load_state_dict`` into a fresh instance adopts the stored shape instead of failing on a
    size mismatch, and its dtype (a placeholder's dtype is arbitrary). Only empty buffers are
    resized."""

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name, buf in self._buffers.items():
            stored = state_dict.get(prefix + name)
            if buf is not None and buf.numel() == 0 and stored is not None and stored.numel() > 0:
                self._buffers[name] = torch.empty(
                    stored.shape, dtype=stored.dtype, device=buf.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
