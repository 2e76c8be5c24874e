"""SSL objectives: EMI, MIO and baselines, all ``nn.Module`` with ``forward(z1, z2) -> scalar``.

After each forward, ``loss.last_terms`` holds the detached terms of the loss (and ``"mi"`` in
nats where the loss has an MI estimate) for logging. ``build_loss(name, **config)`` builds one by
name; see :data:`LOSSES` for the names.
"""

from __future__ import annotations

import difflib
import inspect

from torch import nn

from mitools.losses.baselines import (
    BarlowTwinsLoss,
    BYOLLoss,
    CorInfoMaxLoss,
    MECLoss,
    SimCLRLoss,
    VICRegLoss,
    mec_lamda_inv,
)
from mitools.losses.emi import EMILoss, joint_covariance, min_batch_size, second_order_mi
from mitools.losses.mio import MIOLoss, mio_gradient, mio_loss

__all__ = [
    "LOSSES",
    "BATCH_COUPLED",
    "build_loss",
    "EMILoss",
    "MIOLoss",
    "SimCLRLoss",
    "BarlowTwinsLoss",
    "VICRegLoss",
    "BYOLLoss",
    "CorInfoMaxLoss",
    "MECLoss",
    "mio_loss",
    "mio_gradient",
    "joint_covariance",
    "second_order_mi",
    "min_batch_size",
    "mec_lamda_inv",
]

LOSSES: dict[str, type[nn.Module]] = {
    "emi": EMILoss,
    "mio": MIOLoss,
    "simclr": SimCLRLoss,
    "barlow_twins": BarlowTwinsLoss,
    "vicreg": VICRegLoss,
    "byol": BYOLLoss,
    "corinfomax": CorInfoMaxLoss,
    "mec": MECLoss,
}

# Losses whose value couples the samples of a batch (they accept gather_distributed).
BATCH_COUPLED = ("emi", "mio", "simclr", "barlow_twins", "vicreg", "corinfomax", "mec")


def build_loss(name: str, **config) -> nn.Module:
    """Build the loss registered as ``name`` with keyword ``config``.

    Raises ValueError for an unknown name (listing the known ones and the nearest match) and
    TypeError naming any config key the loss does not accept.
    """
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        near = difflib.get_close_matches(key, list(LOSSES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}{hint}")
    cls = LOSSES[key]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise TypeError(
            f"loss {key!r} got unknown config key(s) {unknown}; accepted keys: {sorted(accepted)}"
        )
    return cls(**config)
