"""Tests for mitools.mi.estimators against independent truths: the O(n^2) brute force written
from the paper's definitions, closed-form Gaussian MI and entropies, and the sample-covariance
formula evaluated directly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import digamma

from mitools.mi.estimators import (
    _check_ksg_args,
    _ksg_bruteforce_parts,
    break_ties,
    gaussian_mi,
    kl_entropy,
    kl_entropy_result,
    ksg_mi,
    ksg_mi_bruteforce,
    ksg_mi_result,
)

# --------------------------------------------------------------------------------------------
# helpers: Gaussian samples with a closed-form MI
# --------------------------------------------------------------------------------------------


def _correlated_gaussian(n, dx, dy, rho, seed):
    """x ~ N(0, I_dx); y_j = rho * x_j + sqrt(1 - rho^2) e_j for j < min(dx, dy), other y_j pure
    noise. MI = -min(dx, dy)/2 * log(1 - rho^2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx))
    y = rng.standard_normal((n, dy))
    m = min(dx, dy)
    y[:, :m] = rho * x[:, :m] + np.sqrt(1 - rho**2) * y[:, :m]
    return x, y, -0.5 * m * np.log(1 - rho**2)


def _datasets():
    rng = np.random.default_rng(123)
    n = 200
    out = []
    for dx, dy in [(1, 1), (2, 3)]:
        x, y, _ = _correlated_gaussian(n, dx, dy, 0.6, seed=dx + 10 * dy)
        out.append((f"gauss{dx}+{dy}", x, y))
        # rounded data: many repeated values, broken by the jitter
        out.append((f"rounded{dx}+{dy}", np.round(2 * x), np.round(2 * y)))
        # integer data with repeats
        out.append(
            (
                f"int-repeats{dx}+{dy}",
                rng.integers(0, 30, (n, dx)).astype(float),
                rng.integers(0, 30, (n, dy)).astype(float),
            )
        )
        # integer data without repeated values: no jitter, many exact distance ties
        xp = np.stack([rng.permutation(n) for _ in range(dx)], axis=1).astype(float)
        yp = np.stack([rng.permutation(n) for _ in range(dy)], axis=1).astype(float)
        out.append((f"int-perm{dx}+{dy}", xp, yp))
    return out


DATASETS = _datasets()


# --------------------------------------------------------------------------------------------
# KSG equals the brute force exactly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("name,x,y", DATASETS, ids=[d[0] for d in DATASETS])
def test_ksg_matches_bruteforce_exactly(name, x, y, variant):
    k = 4
    xa, ya, _ = _check_ksg_args(x, y, k, variant, "jitter", 0)
    nx, ny, eps, eps_x, eps_y = _ksg_bruteforce_parts(xa, ya, k, variant)
    brute = ksg_mi_bruteforce(x, y, k, variant)
    for backend, kw in [("kdtree", {}), ("torch", {"chunk_bytes": 1 << 17})]:  # several chunks
        res = ksg_mi_result(x, y, k, variant, backend=backend, **kw)
        np.testing.assert_array_equal(res.nx, nx, err_msg=f"{backend} nx")
        np.testing.assert_array_equal(res.ny, ny, err_msg=f"{backend} ny")
        np.testing.assert_array_equal(res.eps, eps, err_msg=f"{backend} eps")
        if variant == 2:
            np.testing.assert_array_equal(res.eps_x, eps_x)
            np.testing.assert_array_equal(res.eps_y, eps_y)
        assert abs(res.mi - brute) <= 1e-12
        assert ksg_mi(x, y, k, variant, backend=backend) == res.mi


def test_int_perm_data_really_has_distance_ties():
    """The permutation datasets must exercise the (distance, index) tie rule of variant 2."""
    _, x, y = next(d for d in DATASETS if d[0] == "int-perm1+1")
    z = np.hstack([x, y])
    d = np.sort(np.abs(z[:, None, :] - z[None, :, :]).max(axis=2), axis=1)
    assert np.mean(d[:, 4] == d[:, 5]) > 0.1  # k-th and (k+1)-th neighbour distances tie


def test_bruteforce_formula_by_hand():
    """Tiny 1-D case whose counts are worked out by hand (n = 4, k = 1)."""
    x = np.array([0.0, 1.0, 3.0, 7.0])
    y = np.array([0.0, 2.0, 2.5, 9.0])
    # joint max-norm distances, row by row (strict counts inside eps):
    # i=0: d(0,1)=max(1,2)=2, d(0,2)=3, d(0,3)=9 -> eps=2; nx=#{|x|<2}=1, ny=#{|y|<2}=0
    # i=1: d(1,0)=2, d(1,2)=max(2,0.5)=2, d(1,3)=7 -> eps=2; nx=#{1}=1 (0), ny=#{0.5}=1 (2)
    # i=2: d(2,0)=3, d(2,1)=2, d(2,3)=6.5 -> eps=2; nx=0, ny=1 (1)
    # i=3: d(3,2)=6.5 -> eps=6.5; nx=#{|x-7|<6.5}: 1, 3 -> 2; ny=#{|y-9|<6.5}: none -> 0
    nx = np.array([1, 1, 0, 2])
    ny = np.array([0, 1, 1, 0])
    expect = digamma(1) + digamma(4) - np.mean(digamma(nx + 1) + digamma(ny + 1))
    assert ksg_mi_bruteforce(x, y, k=1, variant=1) == pytest.approx(expect, abs=1e-14)
    assert ksg_mi(x, y, k=1, variant=1) == pytest.approx(expect, abs=1e-14)


# --------------------------------------------------------------------------------------------
# Gaussian MI
# --------------------------------------------------------------------------------------------


def test_gaussian_mi_equals_sample_covariance_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3))
    y = x[:, :2] @ rng.standard_normal((2, 2)) + rng.standard_normal((300, 2))
    c = np.cov(np.hstack([x, y]).T)
    expect = 0.5 * (
        np.linalg.slogdet(c[:3, :3])[1] + np.linalg.slogdet(c[3:, 3:])[1] - np.linalg.slogdet(c)[1]
    )
    assert gaussian_mi(x, y) == pytest.approx(expect, abs=1e-12)
    # ddof cancels without ridge: the 1/n covariance gives the same number
    c0 = np.cov(np.hstack([x, y]).T, ddof=0)
    expect0 = 0.5 * (
        np.linalg.slogdet(c0[:3, :3])[1]
        + np.linalg.slogdet(c0[3:, 3:])[1]
        - np.linalg.slogdet(c0)[1]
    )
    assert gaussian_mi(x, y) == pytest.approx(expect0, abs=1e-12)
    # documented ridge: C (ddof 1) + ridge * I, blocks taken from it
    lam = 0.3
    cr = c + lam * np.eye(5)
    expect_r = 0.5 * (
        np.linalg.slogdet(cr[:3, :3])[1]
        + np.linalg.slogdet(cr[3:, 3:])[1]
        - np.linalg.slogdet(cr)[1]
    )
    assert gaussian_mi(x, y, ridge=lam) == pytest.approx(expect_r, abs=1e-12)


def test_gaussian_mi_population_value():
    """Large sample vs -1/2 log det R of the population correlation, within 5 asymptotic SE
    (Var of the plug-in estimate ~ sum_i rho_i^2 / n over canonical correlations)."""
    n = 200_000
    rng = np.random.default_rng(1)
    a = np.array([[1.0, 0, 0, 0], [0.3, 1.0, 0, 0], [0.8, -0.2, 1.0, 0], [0.1, 0.7, 0.4, 1.0]])
    cov = a @ a.T
    z = rng.multivariate_normal(np.zeros(4), cov, size=n)
    sd = np.sqrt(np.diag(cov))
    r = cov / np.outer(sd, sd)
    truth = -0.5 * np.linalg.slogdet(r)[1] + 0.5 * (
        np.linalg.slogdet(r[:2, :2])[1] + np.linalg.slogdet(r[2:, 2:])[1]
    )
    rxx, ryy, rxy = r[:2, :2], r[2:, 2:], r[:2, 2:]
    canon = np.linalg.eigvals(np.linalg.solve(rxx, rxy) @ np.linalg.solve(ryy, rxy.T)).real
    se = np.sqrt(canon.sum() / n)
    est = gaussian_mi(z[:, :2], z[:, 2:])
    assert truth > 0.05
    assert abs(est - truth) < 5 * se, (est, truth, se)


def test_gaussian_mi_ridge_behaviour():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 2))
    with pytest.raises(ValueError, match="singular"):
        gaussian_mi(x, x)  # identical views: infinite MI
    # with a ridge the identical-view MI is finite, = d/2 log((c+l)^2 / ((c+l)^2 - c^2)) for
    # a diagonal c; it decreases as the ridge grows
    vals = [gaussian_mi(x, x, ridge=lam) for lam in (0.01, 0.1, 1.0)]
    assert all(np.isfinite(vals)) and vals[0] > vals[1] > vals[2] > 0
    xd = rng.standard_normal((100_000, 1))
    c = np.var(xd, ddof=1)
    lam = 0.5
    expect = 0.5 * np.log((c + lam) ** 2 / ((c + lam) ** 2 - c**2))
    assert gaussian_mi(xd, xd, ridge=lam) == pytest.approx(expect, rel=1e-10)
    with pytest.raises(ValueError, match="ridge"):
        gaussian_mi(x, x, ridge=-1.0)


# --------------------------------------------------------------------------------------------
# KSG accuracy against closed-form Gaussian MI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dx,dy,rho", [(1, 1, 0.3), (1, 1, 0.7), (1, 2, 0.6), (2, 1, 0.5), (2, 2, 0.5), (1, 3, 0.7)]
)
@pytest.mark.parametrize("variant", [1, 2])
def test_ksg_accuracy_gaussian(dx, dy, rho, variant):
    """Mean of 4 independent 5000-sample estimates within 0.02 nats of the closed form.

    One 5000-sample estimate has a standard deviation of about 0.011-0.013 nats here (measured
    over 20 seeds), so a single draw would miss 0.02 in ~10% of cases; the mean of 4 has
    SD ~0.006 and the measured bias is ~0.005."""
    ests = []
    for seed in range(4):
        x, y, truth = _correlated_gaussian(5000, dx, dy, rho, seed=100 * seed + 7 * dx + dy)
        ests.append(ksg_mi(x, y, k=5, variant=variant))
    assert truth < 0.5
    assert abs(np.mean(ests) - truth) < 0.02, (ests, truth)


def test_ksg_independent_is_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5000, 2)), rng.standard_normal((5000, 2))
    assert abs(ksg_mi(x, y)) < 0.02


def _ggd_available():
    try:
        from mitools.mi.ggd import GGD  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _ggd_available(), reason="mitools.mi.ggd not available yet")
@pytest.mark.parametrize("beta", [0.5, 2.0])
@pytest.mark.parametrize("dx,dy", [(1, 1), (2, 2), (1, 2)])
def test_ksg_accuracy_ggd(beta, dx, dy):
    """Generalized Gaussian (exact MI from mitools.mi.ggd): mean of 4 independent 5000-sample
    estimates within 0.02 nats (same protocol as the Gaussian test).

    This checks KSG against the exact GGD MI; it tells the exact MI from the second-order
    (Gaussian) value only where the gap exceeds 0.02 AND the second-order value is more than 0.02
    from the KSG mean: beta = 0.5 at 1+1 (gap 0.022) and 2+2 (0.034), beta = 2 at 2+2 (0.027),
    where that is asserted. No such claim is made for beta = 2 at 1+1 (gap 0.015) and 1+2
    (0.020: not above the tolerance) or beta = 0.5 at 1+2 (gap 0.026, but the KSG mean lies
    between the two values); the exact GGD MI is checked against Monte Carlo of the exact
    densities in tests/test_ggd.py (test_mi_matches_monte_carlo)."""
    from mitools.mi.ggd import GGD

    d = dx + dy
    cov = np.eye(d)
    for i in range(min(dx, dy)):
        cov[i, dx + i] = cov[dx + i, i] = 0.5
    g = GGD(cov, beta=beta)
    truth = g.mi(dx)
    assert 0.05 < truth < 0.5
    ests = []
    for seed in range(4):
        z = g.sample(5000, seed=1000 + seed)
        ests.append(ksg_mi(z[:, :dx], z[:, dx:]))
    assert abs(np.mean(ests) - truth) < 0.02, (ests, truth)
    if (beta, (dx, dy)) in {(0.5, (1, 1)), (0.5, (2, 2)), (2.0, (2, 2))}:
        second_order = g.mi_gaussian(dx)
        assert truth - second_order > 0.02
        assert abs(np.mean(ests) - second_order) > 0.02, (ests, second_order)


# --------------------------------------------------------------------------------------------
# Kozachenko-Leonenko entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["euclidean", "max"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_kl_entropy_gaussian(d, norm):
    rng = np.random.default_rng(10 + d)
    a = rng.standard_normal((d, d)) + 2 * np.eye(d)
    x = rng.standard_normal((20_000, d)) @ a.T
    truth = 0.5 * d * np.log(2 * np.pi * np.e) + np.linalg.slogdet(a)[1]
    res = kl_entropy_result(x, k=5, norm=norm)
    assert abs(res.h - truth) < 4 * res.se, (res.h, truth, res.se)
    assert kl_entropy(x, k=5, norm=norm) == res.h


@pytest.mark.parametrize("norm", ["euclidean", "max"])
def test_kl_entropy_uniform_interval(norm):
    rng = np.random.default_rng(21)
    side = 3.0
    x = side * rng.random((20_000, 1))
    res = kl_entropy_result(x, k=5, norm=norm)
    assert abs(res.h - np.log(side)) < 4 * res.se, (res.h, res.se)


@pytest.mark.parametrize("norm", ["euclidean", "max"])
def test_kl_entropy_uniform_square_converges(norm):
    """On a square the k-NN balls of points near the edge stick out of the support, which biases
    KL upwards by O(n^(-1/d)) = O(n^(-1/2)), the same order as the SE: measured +0.0155 nats
    (4.7 SE) at n = 20000. So check the sign and the n^(-1/2) decay of the error instead."""
    rng = np.random.default_rng(22)
    side = 3.0
    truth = 2 * np.log(side)
    errs = {}
    for n in (2_000, 50_000):
        errs[n] = np.mean(
            [kl_entropy(side * rng.random((n, 2)), k=5, norm=norm) - truth for _ in range(4)]
        )
    assert errs[2_000] > 0 and errs[50_000] > 0
    assert errs[50_000] < errs[2_000] / 2.5  # sqrt(25) = 5 expected, noise allowed


def test_kl_unit_ball_volumes():
    # radius convention: max-norm unit ball = [-1, 1]^d (volume 2^d); euclidean V_2 = pi, V_3 = 4pi/3
    x = np.random.default_rng(0).standard_normal((50, 3))
    assert kl_entropy_result(x, norm="max").log_unit_ball == pytest.approx(3 * np.log(2))
    assert kl_entropy_result(x).log_unit_ball == pytest.approx(np.log(4 * np.pi / 3))
    assert kl_entropy_result(x[:, :2]).log_unit_ball == pytest.approx(np.log(np.pi))


# --------------------------------------------------------------------------------------------
# ties
# --------------------------------------------------------------------------------------------


def test_ties_raise_names_count():
    x = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0])
    y = np.arange(8.0) ** 1.5
    with pytest.raises(ValueError, match="x column 0: 3 repeated values"):
        ksg_mi(x, y, k=2, ties="raise")
    with pytest.raises(ValueError, match="3 repeated values"):
        kl_entropy(x, k=2, ties="raise")
    with pytest.raises(ValueError, match="ties"):
        ksg_mi(x, y, k=2, ties="ignore")
    # no repeats: raise mode is silent
    ksg_mi(y, y**0.5 + 1, k=2, ties="raise")


def test_jitter_only_when_needed_and_small():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 2))
    y = np.round(rng.standard_normal((300, 2)) * 3)
    y[:, 1] = rng.standard_normal(300)  # continuous column: left alone
    xo, yo = break_ties(x, y, ties="jitter", seed=5)
    assert np.array_equal(xo, x) and np.array_equal(yo[:, 1], y[:, 1])
    assert not np.array_equal(yo[:, 0], y[:, 0])
    assert np.max(np.abs(yo[:, 0] - y[:, 0])) < 1e-8 * y[:, 0].std()
    assert np.unique(yo[:, 0]).size == 300
    # deterministic in the seed, different across seeds
    assert np.array_equal(break_ties(x, y, seed=5)[1], yo)
    assert not np.array_equal(break_ties(x, y, seed=6)[1], yo)
    # continuous data: the estimate does not depend on the seed at all
    assert ksg_mi(x, y[:, 1], seed=0) == ksg_mi(x, y[:, 1], seed=99)


def test_all_identical_columns():
    x, y, _ = _correlated_gaussian(1000, 1, 1, 0.6, seed=8)
    const = np.full((1000, 1), 3.0)
    # a constant column carries no information: jittered to ~3e-10 spread, it never decides a
    # max-norm distance here, so the estimate is unchanged
    for variant in (1, 2):
        base = ksg_mi(x, y, variant=variant)
        assert ksg_mi(np.hstack([x, const]), y, variant=variant) == pytest.approx(base, abs=1e-12)
    with pytest.raises(ValueError, match="999 repeated values"):
        ksg_mi(np.hstack([x, const]), y, ties="raise")
    # both variables constant: jitter makes them independent noise -> MI ~ 0
    assert abs(ksg_mi(const, np.zeros(1000))) < 0.1
    # entropy of a constant: jitter gives a finite, very negative value (degenerate data)
    assert kl_entropy(const) < -15
    with pytest.raises(ValueError, match="repeated"):
        kl_entropy(const, ties="raise")


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": np.array([0.0, np.nan, 1.0, 2.0])}, "NaN"),
        ({"y": np.array([0.0, np.inf, 1.0, 2.0])}, "infinite"),
        ({"y": np.arange(5.0)}, "same number of samples"),
        ({"x": np.zeros((4, 1, 1))}, "1-D .* or 2-D"),
        ({"x": np.zeros((4, 0))}, "empty"),
        ({"k": 0}, "k must be >= 1"),
        ({"k": 4}, "n = 4 <= k = 4"),
        ({"k": 1.5}, "integer"),
        ({"variant": 3}, "variant"),
        ({"backend": "faiss"}, "backend"),
        ({"x": np.array([1j, 2, 3, 4])}, "real"),
    ],
)
def test_ksg_bad_input(kwargs, match):
    args = {"x": np.array([0.1, 0.5, 0.2, 0.9]), "y": np.array([1.0, 0.3, 0.7, 0.2]), "k": 1}
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        ksg_mi(x, y, **args)


def test_other_bad_input():
    x = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_mi(x * np.nan, x)
    with pytest.raises(ValueError, match="same number"):
        gaussian_mi(x, x[:5])
    with pytest.raises(ValueError, match="norm"):
        kl_entropy(x, norm="l1")
    with pytest.raises(ValueError, match="n = 10 <= k = 10"):
        kl_entropy(x, k=10)
    with pytest.raises(ValueError, match="NaN"):
        ksg_mi_bruteforce(x * np.nan, x)


def _cuda():
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
@pytest.mark.parametrize("variant", [1, 2])
def test_ksg_torch_cuda_matches_bruteforce(variant):
    _, x, y = next(d for d in DATASETS if d[0] == "int-perm2+3")
    res = ksg_mi_result(x, y, 4, variant, backend="torch", device="cuda", chunk_bytes=1 << 17)
    assert abs(res.mi - ksg_mi_bruteforce(x, y, 4, variant)) <= 1e-12


def test_ksg_bias_driver_quick(tmp_path):
    from analysis import ksg_bias

    df = ksg_bias.run(quick=True, out=tmp_path)
    assert (tmp_path / "ksg_bias.csv").exists() and (tmp_path / "ksg_bias.json").exists()
    assert list(df.columns) == [
        "dims", "true_mi", "n", "k", "variant", "seed", "estimate", "bias", "estimator",
    ]  # fmt: skip
    np.testing.assert_allclose(df["bias"], df["estimate"] - df["true_mi"])
    # the generator hits the target MI exactly: check via the closed form of its correlation
    x, y = ksg_bias.gaussian_pairs(200_000, 2, 1.0, seed=0)
    assert gaussian_mi(x, y) == pytest.approx(1.0, abs=0.01)
    # KSG is nearly unbiased in 1+1 dims and strongly low in 5+5 at 2 nats
    ksg = df[df["estimator"] == "ksg"].set_index(["dims", "true_mi", "variant"])["bias"]
    assert abs(ksg[(1, 0.5, 1)]) < 0.1
    assert ksg[(5, 2.0, 1)] < -0.3


def test_jitter_escalates_for_massive_repeats():
    """20000 binary values: noise of 1e-10 * std collides on the float grid (birthday problem);
    the amplitude must grow until all rows are distinct, and stay <= 1e-6 * std."""
    x = (np.random.default_rng(9).random(20_000) < 0.5).astype(float)[:, None]
    (xo,) = break_ties(x, seed=1)
    assert np.unique(xo).size == x.shape[0]
    dev = np.max(np.abs(xo - x))
    assert 1e-10 * x.std() < dev <= 10 * 1e-6 * x.std()  # Gaussian tail: a few amplitudes at most


# --------------------------------------------------------------------------------------------
# KD-tree kernels (numba) and the fallback path, against dense brute-force counts
# --------------------------------------------------------------------------------------------


def _kernel_inputs():
    """(name, points) with exact distance ties and duplicated rows, in 1, 2, 5 and 10 dims."""
    rng = np.random.default_rng(77)
    out = []
    for d in (1, 2, 5, 10):
        a = rng.standard_normal((300, d))
        out.append((f"gauss{d}", a))
        out.append((f"rounded{d}", np.round(2 * a)))  # many ties, duplicated rows in low d
        dup = a.copy()
        dup[150:] = dup[:150]  # every row twice
        out.append((f"dup{d}", dup))
    return out


KERNEL_INPUTS = _kernel_inputs()


def _dense_maxnorm(a):
    return np.abs(a[:, None, :] - a[None, :, :]).max(axis=2)


@pytest.mark.parametrize("name,a", KERNEL_INPUTS, ids=[c[0] for c in KERNEL_INPUTS])
def test_kernel_counts_match_dense(name, a):
    kernels = pytest.importorskip("mitools.mi._ksg_count")
    if kernels.numba is None:
        pytest.skip("numba not installed")
    dist = _dense_maxnorm(a)
    n = a.shape[0]
    rng = np.random.default_rng(5)
    # radii equal to actual distances (ties on the boundary), between them, and 0
    radii = [np.sort(dist, axis=1)[:, 6], dist[np.arange(n), rng.permutation(n)]]
    radii.append(0.5 * radii[0] + 0.5 * radii[1])
    radii.append(np.zeros(n))
    for r in radii:
        for strict in (True, False):
            inside = dist < r[:, None] if strict else dist <= r[:, None]
            expect = inside.sum(axis=1) - inside[np.arange(n), np.arange(n)]
            for leaf_size in (1, 4, 16):  # deep trees exercise whole-node counting
                got = kernels.count_within(a, r, strict, workers=2, leaf_size=leaf_size)
                np.testing.assert_array_equal(got, expect, err_msg=f"{strict=} {leaf_size=}")


@pytest.mark.parametrize("name,a", KERNEL_INPUTS, ids=[c[0] for c in KERNEL_INPUTS])
def test_kernel_knn_matches_dense_order(name, a):
    """k nearest neighbours in the order (distance, index), self excluded, with ties."""
    kernels = pytest.importorskip("mitools.mi._ksg_count")
    if kernels.numba is None:
        pytest.skip("numba not installed")
    dist = _dense_maxnorm(a)
    n = a.shape[0]
    np.fill_diagonal(dist, np.inf)
    k = 5
    order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), dist), axis=1)[:, :k]
    for leaf_size in (1, 4, 16):
        d_got, i_got = kernels.knn(a, k, workers=2, leaf_size=leaf_size)
        np.testing.assert_array_equal(i_got, order, err_msg=f"{leaf_size=}")
        np.testing.assert_array_equal(d_got, np.take_along_axis(dist, order, axis=1))


def _wide_datasets():
    rng = np.random.default_rng(321)
    n = 250
    out = []
    for dx, dy in [(5, 5), (1, 5)]:
        x, y, _ = _correlated_gaussian(n, dx, dy, 0.6, seed=dx * dy)
        out.append((f"gauss{dx}+{dy}", x, y))
        out.append((f"rounded{dx}+{dy}", np.round(x), np.round(y)))
        xp = np.stack([rng.permutation(n) for _ in range(dx)], axis=1).astype(float)
        yp = np.stack([rng.permutation(n) for _ in range(dy)], axis=1).astype(float)
        out.append((f"int-perm{dx}+{dy}", xp, yp))
    return out


WIDE_DATASETS = _wide_datasets()
# the default (numba) path on DATASETS is covered by test_ksg_matches_bruteforce_exactly
PATH_CASES = [(True, *d) for d in WIDE_DATASETS] + [(False, *d) for d in DATASETS + WIDE_DATASETS]


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize(
    "fast,name,x,y",
    PATH_CASES,
    ids=[("numba-" if c[0] else "fallback-") + c[1] for c in PATH_CASES],
)
def test_kdtree_paths_match_bruteforce(fast, name, x, y, variant, monkeypatch):
    """Both the numba kernels and the scipy/scikit-learn fallback reproduce the brute force."""
    from mitools.mi import _ksg_count

    if fast and not _ksg_count.AVAILABLE:
        pytest.skip("numba not installed or disabled")
    monkeypatch.setattr(_ksg_count, "AVAILABLE", fast)
    k = 4
    xa, ya, _ = _check_ksg_args(x, y, k, variant, "jitter", 0)
    nx, ny, eps, eps_x, eps_y = _ksg_bruteforce_parts(xa, ya, k, variant)
    res = ksg_mi_result(x, y, k, variant, workers=2)
    np.testing.assert_array_equal(res.nx, nx)
    np.testing.assert_array_equal(res.ny, ny)
    np.testing.assert_array_equal(res.eps, eps)
    if variant == 2:
        np.testing.assert_array_equal(res.eps_x, eps_x)
        np.testing.assert_array_equal(res.eps_y, eps_y)
    assert abs(res.mi - ksg_mi_bruteforce(x, y, k, variant)) <= 1e-12


@pytest.mark.parametrize("variant", [1, 2])
def test_kdtree_paths_agree_at_larger_n(variant, monkeypatch):
    """n = 4000, 5+5 dims: numba (1 and 2 threads) and fallback give identical counts and eps;
    the brute force is checked on a subset of points (its rows are independent)."""
    from mitools.mi import _ksg_count

    if not _ksg_count.AVAILABLE:
        pytest.skip("numba not installed or disabled")
    x, y, _ = _correlated_gaussian(4000, 5, 5, 0.6, seed=11)
    fast1 = ksg_mi_result(x, y, 5, variant, workers=1)
    fast2 = ksg_mi_result(x, y, 5, variant, workers=2)
    monkeypatch.setattr(_ksg_count, "AVAILABLE", False)
    slow = ksg_mi_result(x, y, 5, variant, workers=2)
    for res in (fast2, slow):
        for field in ("nx", "ny", "eps", "eps_x", "eps_y"):
            np.testing.assert_array_equal(getattr(res, field), getattr(fast1, field))
        assert res.mi == fast1.mi
    # brute force for 200 rows, written out here (max norm, (distance, index) order)
    z = np.hstack([x, y])
    for i in np.random.default_rng(0).choice(4000, 200, replace=False):
        dx = np.abs(x - x[i]).max(axis=1)
        dy = np.abs(y - y[i]).max(axis=1)
        dz = np.maximum(dx, dy)
        dz[i] = np.inf
        knn = np.argsort(dz, kind="stable")[:5]
        assert fast1.eps[i] == dz[knn[-1]]
        assert np.abs(z[knn] - z[i]).max() == dz[knn[-1]]
        if variant == 1:
            ex, ey, strict = dz[knn[-1]], dz[knn[-1]], True
        else:
            ex, ey, strict = dx[knn].max(), dy[knn].max(), False
        dx[i] = dy[i] = np.inf
        assert fast1.nx[i] == np.count_nonzero(dx < ex if strict else dx <= ex)
        assert fast1.ny[i] == np.count_nonzero(dy < ey if strict else dy <= ey)
