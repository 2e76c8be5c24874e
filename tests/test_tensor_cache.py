"""TensorCache: cached constants must stay usable wherever the hot path runs next."""

from __future__ import annotations

import torch
from torch.func import grad, jacfwd, jacrev

from mitools._tensor_cache import TensorCache
from mitools.losses import MIOLoss
from mitools.losses.mio import _NEGATIVE_WEIGHTS


def test_a_constant_built_inside_a_torch_func_transform_is_not_kept():
    cache = TensorCache()
    seen = {}

    def f(x):
        seen["w"] = cache.get("w", lambda: torch.arange(3.0))
        return (x * seen["w"]).sum()

    torch.testing.assert_close(grad(f)(torch.ones(3)), torch.arange(3.0))
    assert len(cache) == 0  # a wrapper of the finished transform's level: not cached
    assert torch.equal(cache.get("w", lambda: torch.arange(3.0)), torch.arange(3.0))
    assert len(cache) == 1  # built outside: cached, and usable inside a later transform
    torch.testing.assert_close(grad(f)(torch.ones(3)), torch.arange(3.0))


def test_mio_after_a_hessian_by_torch_func():
    # the Hessian code differentiates losses twice with torch.func; a mask cached two levels
    # deep used to break the next single-level transform (functorch INTERNAL ASSERT "escaped?")
    _NEGATIVE_WEIGHTS.clear()
    z2 = torch.randn(11, 4, dtype=torch.float64)
    loss_fn = MIOLoss(check_finite=False)
    hess = jacfwd(jacrev(lambda z: loss_fn(z, z2)))(torch.randn(11, 4, dtype=torch.float64))
    g = grad(lambda z: loss_fn(z, z2))(torch.randn(11, 4, dtype=torch.float64))
    assert hess.shape == (11, 4, 11, 4) and torch.isfinite(g).all()


def test_least_recently_used_entry_goes_first():
    cache = TensorCache(maxsize=2)
    for key in ("a", "b"):
        cache.get(key, lambda: torch.zeros(1))
    cache.get("a", lambda: torch.ones(1))  # a hit: "a" becomes the most recent
    cache.get("c", lambda: torch.zeros(1))
    assert len(cache) == 2
    assert float(cache.get("b", lambda: torch.full((1,), 7.0))) == 7.0  # "b" was evicted
