"""Cross-check of the exact GGD MI (quadrature) against KSG on exact samples after an asinh map.

asinh is applied elementwise to each side, a homeomorphism, so the MI is unchanged; it tames the
heavy tails that starve KSG's neighbour counts. The tolerance for agreement is the issue's stated
KSG accuracy for low-MI cases in 2-4 dimensions (0.02 nats) plus three standard errors of the mean
over seeds. In 3+5 dimensions KSG is known to be biased low (Kraskov et al. 2004; measured in
analysis/ksg_bias.py): there the test asserts the direction and significance of that bias instead,
so a change that silently "fixed" or flipped it would be noticed.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.beta_sweep import correlated_cov
from mitools.mi.estimators import ksg_mi
from mitools.mi.ggd import GGD

BETAS = (0.25, 0.5, 2.0, 4.0, 8.0)
RHO = 0.5  # second-order MI 0.14 nats per coordinate pair: low-MI regime


def _ksg_after_asinh(ggd: GGD, split: int, n: int, seeds: int) -> tuple[float, float]:
    estimates = []
    for seed in range(seeds):
        z = np.arcsinh(ggd.sample(n, seed=seed))
        estimates.append(ksg_mi(z[:, :split], z[:, split:], k=5))
    return float(np.mean(estimates)), float(np.std(estimates, ddof=1) / np.sqrt(seeds))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dims", [(1, 1), (2, 2)], ids=["1+1", "2+2"])
def test_exact_mi_agrees_with_ksg_low_dim(beta, dims):
    p, q = dims
    ggd = GGD(cov=correlated_cov(p, q, RHO), beta=beta)
    exact = ggd.mi(p)
    mean, se = _ksg_after_asinh(ggd, p, n=20_000, seeds=3)
    assert abs(mean - exact) <= 0.02 + 3 * se, (beta, dims, exact, mean, se)
    # The comparison can discriminate: the second-order value is off by the gap for beta != 1.
    assert abs(ggd.mi_gaussian(p) - exact) > 0.005


@pytest.mark.parametrize("beta", BETAS)
def test_ksg_is_biased_low_in_3_plus_5_dims(beta):
    ggd = GGD(cov=correlated_cov(3, 5, RHO), beta=beta)
    exact = ggd.mi(3)
    mean, se = _ksg_after_asinh(ggd, 3, n=10_000, seeds=3)
    assert mean < exact - 3 * se, (beta, exact, mean, se)
    # ... but not absurdly: the estimate keeps the right order of magnitude.
    assert mean > 0.3 * exact
