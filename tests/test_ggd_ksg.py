"""Cross-check of the exact GGD MI (quadrature) against KSG on exact samples after an asinh map.

asinh is applied elementwise to each side, a homeomorphism, so the MI is unchanged; it tames the
heavy tails that starve KSG's neighbour counts. The tolerance for agreement is the issue's stated
KSG accuracy for low-MI cases in 2-4 dimensions (0.02 nats) plus three standard errors of the mean
over seeds. In 3+5 dimensions KSG is known to be biased low (Kraskov et al. 2004; measured in
analysis/ksg_bias.py): there the test asserts the direction and significance of that bias instead,
so a change that silently "fixed" or flipped it would be noticed.

What the low-dimensional check can and cannot discriminate. It accepts any value within the
tolerance (0.02 + 3 SE) of the KSG mean, so it tells the exact MI from the second-order (Gaussian)
value only where the second-order value falls outside that tolerance. With the fixed seeds it does
for 7 of the 10 cases (gaps exact - second-order 0.034 to 0.16 nats), and the test asserts that
the second-order value would fail the same check there. It does NOT for 1+1 at beta = 0.5 and 2
(gaps 0.022 and 0.015) and 2+2 at beta = 2 (gap 0.027): there the gap is below or within the
tolerance, so those cases only check agreement; the exact value at these betas is checked against
Monte Carlo of the exact densities in tests/test_ggd.py (test_mi_matches_monte_carlo).
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.beta_sweep import correlated_cov
from mitools.mi.estimators import ksg_mi
from mitools.mi.ggd import GGD

BETAS = (0.25, 0.5, 2.0, 4.0, 8.0)
RHO = 0.5  # second-order MI 0.14 nats per coordinate pair: low-MI regime
# (beta, dims) where the gap exact - second-order is within the KSG tolerance (module docstring)
NOT_DISCRIMINATED = {(0.5, (1, 1)), (2.0, (1, 1)), (2.0, (2, 2))}


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
    tolerance = 0.02 + 3 * se
    assert abs(mean - exact) <= tolerance, (beta, dims, exact, mean, se)
    if (beta, dims) not in NOT_DISCRIMINATED:
        # The comparison discriminates: the gap exceeds the tolerance and the second-order value
        # would fail the same check.
        second_order = ggd.mi_gaussian(p)
        assert exact - second_order > tolerance, (beta, dims, exact - second_order, tolerance)
        assert abs(mean - second_order) > tolerance, (beta, dims, mean, second_order, tolerance)


@pytest.mark.parametrize("beta", BETAS)
def test_ksg_is_biased_low_in_3_plus_5_dims(beta):
    ggd = GGD(cov=correlated_cov(3, 5, RHO), beta=beta)
    exact = ggd.mi(3)
    mean, se = _ksg_after_asinh(ggd, 3, n=10_000, seeds=3)
    assert mean < exact - 3 * se, (beta, exact, mean, se)
    # ... but not absurdly: the estimate keeps the right order of magnitude.
    assert mean > 0.3 * exact
