"""mitools.mi: mutual information theory and estimation.

- :class:`GGD` - multivariate generalized Gaussian (power exponential) with exact MI by quadrature.
- Estimators from samples: :func:`gaussian_mi` (second-order, log-det), :func:`ksg_mi`
  (Kraskov-Stoegbauer-Grassberger), :func:`kl_entropy` (Kozachenko-Leonenko).
- Homeomorphisms (MI-preserving maps) and :func:`check_invariance`.

All quantities are in nats.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GGD": "ggd",
    "gaussian_mi": "estimators",
    "ksg_mi": "estimators",
    "kl_entropy": "estimators",
    "check_invariance": "invariance",
    "summarise_invariance": "invariance",
}


def __getattr__(name: str):
    # Lazy so that importing one submodule never pays for (or depends on) the others.
    if name in _EXPORTS:
        module = importlib.import_module(f"mitools.mi.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'mitools.mi' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
