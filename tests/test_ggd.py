"""Tests for mitools.mi.ggd against independent truths.

Truths used: scipy.stats.gennorm (n = 1); Monte Carlo over exact samples; 2-D quadrature of the
joint density; the m = 2 closed form of the marginal generator (upper incomplete gamma); mpmath.quad
at 30 digits; an independent nested scipy.integrate.quad reference for the marginal entropies; and
marginal densities obtained by integrating the joint density numerically.
"""

from __future__ import annotations

import functools
import math
import re
import time
import warnings

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, special, stats
from scipy.interpolate import CubicSpline

from mitools.mi import ggd as G
from mitools.mi._ggd_reference import ref_log_c, ref_log_generator, ref_mi_gap
from mitools.mi.ggd import GGD

# ----------------------------------------------------------------------------- independent references


def mp_log_generator(u: float, k: int, n: int, beta: float) -> float:
    """log g_k(u) with mpmath.quad at 30 digits (tanh-sinh on a peak-centred split of z = log t)."""
    with mp.workdps(30):
        m = n - k
        b = mp.mpf(beta)
        uu = mp.mpf(u)
        log_c = mp.log(b) + mp.loggamma(mp.mpf(n) / 2) - mp.mpf(n) / 2 * mp.log(mp.pi)
        log_c -= mp.mpf(n) / (2 * b) * mp.log(2) + mp.loggamma(mp.mpf(n) / (2 * b))
        ub = uu**b

        def excess(t):
            return t**b if uu == 0 else ub * mp.expm1(b * mp.log1p(t / uu))

        def phi(z):
            return mp.mpf(m) / 2 * z - excess(mp.exp(z)) / 2

        def g(z):
            t = mp.exp(z)
            return mp.log(b) + z + (b - 1) * mp.log(uu + t) - mp.log(m)

        zs = mp.findroot(g, (mp.mpf(-200), mp.mpf(200)), solver="anderson")
        peak = phi(zs)
        width = 1 / mp.sqrt(mp.mpf(m) / 2 * min(1, b))
        pts = [zs + j * width for j in (-200 / mp.mpf(m) - 20, -10, -3, 0, 3, 10, 40)]
        tot = mp.quad(lambda z: mp.exp(phi(z) - peak), pts)
        const = log_c + mp.mpf(m) / 2 * mp.log(mp.pi) - mp.loggamma(mp.mpf(m) / 2)
        return float(const - ub / 2 + peak + mp.log(tot))


def closed_form_log_generator_m2(u: np.ndarray, k: int, beta: float) -> np.ndarray:
    """m = 2: g_k(u) = c(k + 2, b) pi 2^(1/b)/b Gamma_upper(1/b, u^b / 2)."""
    s = 1.0 / beta
    log_upper = np.log(special.gammaincc(s, 0.5 * u**beta)) + special.gammaln(s)
    return ref_log_c(k + 2, beta) + math.log(math.pi) + s * math.log(2) - math.log(beta) + log_upper


def random_cov(n: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((n, n))
    corr = a @ a.T + 0.5 * np.eye(n)
    d = np.sqrt(np.diag(corr))
    scales = np.exp(rng.uniform(-1.5, 1.5, n))
    return (corr / np.outer(d, d)) * np.outer(scales, scales)


def gaussian_mi(cov: np.ndarray, p: int) -> float:
    ld = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return 0.5 * (ld(cov[:p, :p]) + ld(cov[p:, p:]) - ld(cov))


# ----------------------------------------------------------------------------- n = 1 vs gennorm


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_n1_matches_scipy_gennorm(beta):
    disp, loc = 2.3, 0.7
    d = GGD(dispersion=disp, beta=beta, loc=loc)
    # exp(-|x|^(2b) / (2 disp^b)) = exp(-|x/s|^(2b)) with s = 2^(1/(2b)) sqrt(disp)
    ref = stats.gennorm(2 * beta, loc=loc, scale=2 ** (1 / (2 * beta)) * math.sqrt(disp))
    x = np.linspace(-30, 30, 101)
    np.testing.assert_allclose(d.logpdf(x), ref.logpdf(x), rtol=1e-12, atol=1e-12)
    assert d.entropy() == pytest.approx(float(ref.entropy()), abs=1e-12)
    assert d.cov[0, 0] == pytest.approx(float(ref.var()), rel=1e-12)
    assert GGD(cov=ref.var(), beta=beta).dispersion[0, 0] == pytest.approx(disp, rel=1e-12)
    samples = d.sample(4000, seed=11)
    assert samples.shape == (4000, 1)
    assert stats.kstest(samples[:, 0], ref.cdf).pvalue > 0.01


# ----------------------------------------------------------------------------- moments, entropy


@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_entropy_matches_monte_carlo(beta):
    rng = np.random.default_rng(1)
    d = GGD(dispersion=random_cov(3, rng), beta=beta, loc=[1.0, -2.0, 0.5])
    nll = -d.logpdf(d.sample(40_000, seed=2))
    se = nll.std(ddof=1) / math.sqrt(nll.size)
    assert abs(nll.mean() - d.entropy()) < 3 * se


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_sample_covariance_matches_cov(beta):
    rng = np.random.default_rng(3)
    cov = random_cov(3, rng)
    d = GGD(cov, beta=beta, loc=[3.0, 0.0, -1.0])
    x = d.sample(200_000, seed=4) - d.loc
    np.testing.assert_allclose(d.cov, cov, rtol=1e-12)
    prod = x[:, :, None] * x[:, None, :]
    se = prod.std(axis=0, ddof=1) / math.sqrt(x.shape[0])
    assert np.all(np.abs(prod.mean(axis=0) - cov) < 4 * se)


@pytest.mark.parametrize("beta", [0.4, 1.0, 3.0])
def test_logpdf_integrates_to_one_2d(beta):
    cov = np.array([[2.0, -0.9], [-0.9, 0.7]])
    d = GGD(dispersion=cov, beta=beta, loc=[0.3, -0.2])
    # polar coordinates about loc: periodic trapezoid in theta (spectral), adaptive quad in r
    theta = np.linspace(0, 2 * math.pi, 128, endpoint=False)
    e = np.stack([np.cos(theta), np.sin(theta)], axis=1)

    def radial(r):
        return r * np.exp(d.logpdf(d.loc + r * e))

    per_theta = integrate.quad_vec(radial, 0, np.inf, epsabs=1e-13, epsrel=1e-11)[0]
    assert per_theta.mean() * 2 * math.pi == pytest.approx(1.0, abs=1e-8)


# ----------------------------------------------------------------------------- marginal generator


@pytest.mark.parametrize("beta", [0.2, 0.25, 0.5, 1.0, 2.0, 8.0, 10.0])
@pytest.mark.parametrize("k", [1, 3, 14])
def test_marginal_generator_m2_closed_form(beta, k):
    # u^beta / 2 from 1e-6 to 250: g spans ~110 decades
    u = np.logspace(-12, math.log10(500.0) / beta, 25)
    ours = G.marginal_log_generator(u, k, k + 2, beta)
    ref = closed_form_log_generator_m2(u, k, beta)
    np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    ("k", "m", "beta"),
    [
        (1, 1, 0.2),
        (5, 3, 0.2),
        (1, 31, 0.25),
        (2, 5, 0.5),
        (4, 13, 8.0),
        (1, 1, 10.0),
        (16, 16, 10.0),
    ],
)
def test_marginal_generator_mpmath(k, m, beta):
    n = k + m
    # u from 0 and 1e-8 up to u^beta / 2 = 150 (log g spans >100 decades)
    u = np.concatenate([[0.0], np.logspace(-8, math.log10(300.0) / beta, 3)])
    ours = G.marginal_log_generator(u, k, n, beta)
    ref = np.array([mp_log_generator(float(v), k, n, beta) for v in u])
    np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-10)


def test_marginal_generator_full_dimension_is_joint_generator():
    u = np.logspace(-3, 2, 7)
    ref = G.ggd_log_normaliser(5, 0.7) - 0.5 * u**0.7
    np.testing.assert_allclose(G.marginal_log_generator(u, 5, 5, 0.7), ref, rtol=1e-14)


@pytest.mark.parametrize("beta", [0.3, 2.0, 7.0])
def test_marginal_logpdf_matches_integrating_out_the_joint(beta):
    rng = np.random.default_rng(5)
    cov = random_cov(3, rng)
    loc = np.array([0.5, -1.0, 2.0])
    d = GGD(dispersion=cov, beta=beta, loc=loc)
    idx = [0, 2]
    x = d.sample(5, seed=6)[:, idx]

    for xi, ours in zip(x, d.marginal_logpdf(x, idx), strict=True):
        # integrate the joint density over the missing coordinate (index 1)
        scale = math.sqrt(d.cov[1, 1])

        def f(v, xi=xi):
            return math.exp(d.logpdf(np.array([xi[0], v, xi[1]])))

        # split around the conditional location so quad sees the mass
        c = loc[1] + cov[1, idx] @ np.linalg.solve(cov[np.ix_(idx, idx)], xi - loc[idx])
        parts = [(-np.inf, c - 5 * scale), (c - 5 * scale, c + 5 * scale), (c + 5 * scale, np.inf)]
        tot = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=400)[0] for a, b in parts)
        assert ours == pytest.approx(math.log(tot), abs=1e-8)


# ----------------------------------------------------------------------------- quadrature diagnostics


@pytest.mark.parametrize("beta", [0.2, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize(("k", "n"), [(1, 2), (3, 8), (1, 32), (16, 32), (31, 32)])
def test_quadrature_diagnostics(beta, k, n):
    r = G.marginal_entropy_quadrature(k, n, beta)
    assert r.normalisation == pytest.approx(1.0, abs=1e-11)
    assert r.mean_u == pytest.approx(r.mean_u_expected, rel=1e-10)
    full = G.marginal_entropy_quadrature(n, n, beta)  # outer rule against the closed form
    assert full.entropy == pytest.approx(G.standard_entropy(n, beta), abs=1e-9)


def test_quadrature_converged_under_step_halving(monkeypatch):
    cases = [(1, 2, 0.2), (3, 4, 5.0), (1, 2, 10.0), (5, 8, 0.5), (16, 32, 3.0), (1, 32, 2.0)]
    coarse = [G._marginal_entropy_cached(k, n, b).entropy for k, n, b in cases]
    G._marginal_entropy_cached.cache_clear()
    G._inner_rule.cache_clear()
    monkeypatch.setattr(G, "_MAX_STEP", G._MAX_STEP / 2)
    monkeypatch.setattr(G, "_STEP_PER_STRIP", G._STEP_PER_STRIP / 2)
    monkeypatch.setattr(G, "_LOG_DROP", G._LOG_DROP + 20)
    fine = [G._marginal_entropy_cached(k, n, b).entropy for k, n, b in cases]
    G._marginal_entropy_cached.cache_clear()
    G._inner_rule.cache_clear()
    np.testing.assert_allclose(coarse, fine, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- mutual information


def test_mi_equals_gaussian_at_beta_one():
    rng = np.random.default_rng(7)
    for n, p in [(2, 1), (5, 2), (12, 4), (32, 16)]:
        cov = random_cov(n, rng)
        d = GGD(cov, beta=1.0)
        ref = gaussian_mi(cov, p)
        assert d.mi(p) == pytest.approx(ref, abs=1e-8)
        assert d.mi_gaussian(p) == pytest.approx(ref, abs=1e-10)
        assert d.mi_ggd_marginals(p) == pytest.approx(ref, abs=1e-10)
        assert abs(d.mi_gap(p)) < 1e-9


@pytest.mark.parametrize(
    ("beta", "p", "q"),
    [(0.2, 1, 1), (0.25, 3, 5), (2.0, 1, 3), (10.0, 1, 1), (6.0, 2, 5)],
)
def test_mi_gap_matches_nested_scipy_quadrature(beta, p, q):
    assert G.mi_gap(beta, p, q) == pytest.approx(ref_mi_gap(beta, p, q), abs=1e-10)


@functools.cache
def _spline_log_generator(k: int, n: int, beta: float):
    """Independent log g_k: scipy-quad values on a log-u grid, cubic spline in y = log u of
    log g_k(e^y) + e^(beta y)/2 (the smooth part); its accuracy is checked at grid midpoints.
    Covers u <= (2 G_max)^(1/beta), G_max far in the Gamma(n/(2 beta)) tail."""
    a = n / (2 * beta)
    y_top = math.log(2 * (a + 40 + 8 * math.sqrt(a))) / beta
    y = np.concatenate(
        [np.linspace(-14.0, -3.0, 30, endpoint=False), np.linspace(-3.0, y_top, 130)]
    )

    def smooth(v):
        return ref_log_generator(math.exp(v), k, n, beta) + 0.5 * math.exp(beta * v)

    spline = CubicSpline(y, [smooth(v) for v in y])
    mid = 0.5 * (y[1:] + y[:-1])[::7]
    err = np.max(np.abs(spline(mid) - np.array([smooth(v) for v in mid])))
    assert err < 1e-5, f"reference spline too coarse: {err}"
    g0 = ref_log_generator(0.0, k, n, beta)

    def log_g(u):
        assert np.all(u <= math.exp(y_top)), "sample outside the reference spline range"
        yy = np.log(np.maximum(u, 1e-300))
        return np.where(yy > y[0], spline(yy) - 0.5 * u**beta, g0)

    return log_g


def _mc_mi(d: GGD, p: int, n_samples: int, seed: int, beta: float):
    """MC estimate of I = E[log f(x, y) - log f(x) - log f(y)] with independently computed
    marginal log-densities. Returns (mean, standard error)."""
    n = d.n
    x = d.sample(n_samples, seed=seed)
    disp = d.dispersion
    terms = d.logpdf(x)
    for sel in (slice(0, p), slice(p, n)):
        block = disp[sel, sel]
        z = np.linalg.solve(np.linalg.cholesky(block), (x[:, sel] - d.loc[sel]).T)
        u = np.sum(z * z, axis=0)
        k = block.shape[0]
        if n - k == 2:
            log_g = closed_form_log_generator_m2(u, k, beta)
        else:
            log_g = _spline_log_generator(k, n, beta)(u)
        terms = terms - (-0.5 * np.linalg.slogdet(block)[1] + log_g)
    return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(terms.size))


@pytest.mark.parametrize("beta", [0.25, 0.5, 2.0, 4.0, 8.0])
@pytest.mark.parametrize(("p", "q"), [(1, 1), (2, 2), (3, 5)])
def test_mi_matches_monte_carlo(beta, p, q):
    rng = np.random.default_rng(100 + p + 10 * q)
    d = GGD(random_cov(p + q, rng), beta=beta, loc=rng.standard_normal(p + q))
    mean, se = _mc_mi(d, p, 30_000, seed=int(beta * 100) + p, beta=beta)
    assert abs(mean - d.mi(p)) < 3 * se, (mean, se, d.mi(p))


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_gap_is_sigma_free(beta):
    p, q = 1, 1
    covs = [
        np.eye(2),
        np.array([[1.0, 0.6 * 10], [0.6 * 10, 100.0]]),
        np.array([[0.01, -0.9 * 0.1 * 3], [-0.9 * 0.1 * 3, 9.0]]),
    ]
    exact = G.mi_gap(beta, p, q)
    rng = np.random.default_rng(8)
    for cov in [*covs, random_cov(2, rng)]:
        d = GGD(cov, beta=beta)
        assert d.mi(p) - d.mi_gaussian(p) == pytest.approx(exact, abs=1e-12)
    for i, cov in enumerate(covs):
        d = GGD(cov, beta=beta)
        mean, se = _mc_mi(d, p, 30_000, seed=20 + i, beta=beta)
        assert abs(mean - gaussian_mi(cov, p) - exact) < 3 * se
    # larger dimension: random correlations and scales, structural check
    values = [GGD(random_cov(7, rng), beta=beta).mi_gap(3) for _ in range(3)]
    np.testing.assert_allclose(values, G.mi_gap(beta, 3, 4), rtol=0, atol=1e-12)


def test_gap_nonnegative_and_zero_at_beta_one():
    betas = [0.2, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 2.0, 4.0, 7.0, 10.0]
    dims = [(1, 1), (1, 3), (2, 2), (4, 4), (1, 16), (8, 8), (16, 16)]
    for b in betas:
        for p, q in dims:
            gap = G.mi_gap(b, p, q)
            if b == 1.0:
                assert abs(gap) < 1e-9
            else:
                assert gap > 1e-6, (b, p, q, gap)


def test_ggd_marginal_formula():
    # phi(beta, 1) from scipy gennorm with unit variance
    for beta in [0.3, 1.0, 2.5]:
        shape = 2 * beta
        scale = math.sqrt(1.0 / stats.gennorm(shape).var())
        assert G.unit_cov_entropy(1, beta) == pytest.approx(
            float(stats.gennorm(shape, scale=scale).entropy()), abs=1e-12
        )
    assert G.ggd_marginal_formula_gap(1.0, 3, 5) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(9)
    cov = random_cov(4, rng)
    d = GGD(cov, beta=0.5)
    assert d.mi_ggd_marginals(2) == pytest.approx(
        gaussian_mi(cov, 2) + G.ggd_marginal_formula_gap(0.5, 2, 2), abs=1e-12
    )


def _radial_unit_cov_entropy(k: int, beta: float) -> float:
    """Entropy of the k-dim GGD with unit covariance by 1-D radial quadrature, sharing nothing
    with the module's closed forms: normaliser, second moment and E[r^(2 beta)/2] of the
    unnormalised unit-dispersion density exp(-r^(2 beta)/2) (radial measure |S^(k-1)| r^(k-1) dr)
    by scipy.integrate.quad; then rescale to unit covariance (h shifts by -k/2 log var)."""
    area = 2 * math.pi ** (k / 2) / math.gamma(k / 2)
    # cut where r^(2 beta)/2 exceeds the Gamma(k/(2 beta)) mode by 60: the tail is below 1e-20
    r_top = (2 * (k / (2 * beta) + 60)) ** (1 / (2 * beta))
    points = [r_top * f for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.7)]

    def moment(power: float, weight=lambda r: 1.0) -> float:
        def f(r):
            return r ** (k - 1 + power) * math.exp(-0.5 * r ** (2 * beta)) * weight(r)

        value = integrate.quad(f, 0, r_top, points=points, epsabs=0, epsrel=1e-13, limit=500)[0]
        return area * value

    z = moment(0)
    mean_potential = moment(0, lambda r: 0.5 * r ** (2 * beta)) / z
    var = moment(2) / z / k  # per-coordinate variance of the unit-dispersion GGD
    return math.log(z) + mean_potential - 0.5 * k * math.log(var)


@pytest.mark.parametrize("beta", [0.3, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_unit_cov_entropy_matches_radial_quadrature(beta, k):
    # phi(beta, k) for k > 1 (where the k/2 log kappa term matters) against the radial quadrature;
    # e.g. beta = 0.5, k = 4: 5.5554906
    assert G.unit_cov_entropy(k, beta) == pytest.approx(
        _radial_unit_cov_entropy(k, beta), abs=1e-11
    )
    gauss = 0.5 * k * math.log(2 * math.pi * math.e)  # closed form at beta = 1
    if beta == 1.0:
        assert G.unit_cov_entropy(k, beta) == pytest.approx(gauss, abs=1e-12)
    else:  # the Gaussian has the largest entropy at a given covariance
        assert G.unit_cov_entropy(k, beta) < gauss - 1e-3


def test_first_call_fast():
    G._marginal_entropy_cached.cache_clear()
    G._inner_rule.cache_clear()
    for beta in [0.2, 10.0]:
        d = GGD(np.eye(32), beta=beta)
        for split in (16, 1):
            t0 = time.process_time()  # CPU time: robust to other jobs on the machine
            d.mi(split)
            assert time.process_time() - t0 < 0.5


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cov": np.eye(2), "beta": 0.0}, "beta"),
        ({"cov": np.eye(2), "beta": -1.0}, "beta"),
        ({"cov": np.eye(2), "beta": float("nan")}, "beta"),
        ({"cov": np.eye(2), "beta": float("inf")}, "beta"),
        ({"beta": 1.0}, "exactly one"),
        ({"cov": np.eye(2), "dispersion": np.eye(2), "beta": 1.0}, "exactly one"),
        ({"cov": np.ones((2, 3)), "beta": 1.0}, "square"),
        ({"cov": np.ones((2, 2, 2)), "beta": 1.0}, "square"),
        ({"cov": [[1.0, 0.5], [0.4, 1.0]], "beta": 1.0}, "symmetric"),
        ({"cov": [[1.0, 2.0], [2.0, 1.0]], "beta": 1.0}, "positive definite"),
        ({"cov": [[1.0, np.nan], [np.nan, 1.0]], "beta": 1.0}, "NaN"),
        ({"dispersion": -1.0, "beta": 1.0}, "positive definite"),
        ({"cov": np.eye(2), "beta": 1.0, "loc": [0.0, 0.0, 0.0]}, "loc"),
        ({"cov": np.eye(2), "beta": 1.0, "loc": [0.0, np.inf]}, "loc"),
    ],
)
def test_bad_constructor_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GGD(**kwargs)


def _stated_min_beta(message: str) -> float:
    return float(re.search(r"beta (?:must be )?>= ([0-9.e-]+)", message).group(1))


def test_tiny_beta_sampling_raises_a_clear_error_at_the_measured_limit():
    # the radius (2G)^(1/(2 beta)), G ~ Gamma(n/(2 beta)), overflows float64 for beta below
    # ~0.0045 at n = 2 (20,000 unit-dispersion samples measured finite from beta = 0.00447; at
    # 0.97 of that, 36 % of them overflow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ValueError, not a RuntimeWarning and NaN samples
        with pytest.raises(ValueError, match=r"overflow float64 at beta=0.003 \(n=2\)") as info:
            GGD(dispersion=np.eye(2), beta=0.003).sample(100, seed=0)
        limit = _stated_min_beta(str(info.value))
        assert 0.00447 <= limit <= 1.05 * 0.00447  # the stated limit is the measured one
        assert np.all(np.isfinite(GGD(dispersion=np.eye(2), beta=limit).sample(20_000, seed=1)))
        with pytest.raises(ValueError, match="overflow"):
            GGD(dispersion=np.eye(2), beta=0.95 * limit).sample(20_000, seed=1)
        # a larger dispersion overflows earlier, and the stated limit says so
        wide = GGD(dispersion=np.diag([1e200, 1.0]), beta=0.006)
        with pytest.raises(ValueError, match="overflow") as info:
            wide.sample(1000, seed=2)
        wide_limit = _stated_min_beta(str(info.value))
        assert wide_limit > 0.006
        wide = GGD(dispersion=np.diag([1e200, 1.0]), beta=wide_limit)
        assert np.all(np.isfinite(wide.sample(20_000, seed=3)))


def test_tiny_beta_covariance_raises_a_clear_error_at_the_overflow_limit():
    d = GGD(dispersion=np.eye(2), beta=0.005)
    with pytest.raises(ValueError, match=r"kappa\(n=2, beta=0.005\).*overflows float64") as info:
        _ = d.cov
    limit = _stated_min_beta(str(info.value))
    # at the stated limit kappa is finite and within 1e-3 (relative, in log) of the float64 max
    kappa = G.ggd_cov_factor(2, limit)
    assert math.isfinite(kappa) and math.log(kappa) > (1 - 1e-3) * math.log(np.finfo(float).max)
    with pytest.raises(ValueError, match="overflows"):
        GGD(cov=np.eye(2), beta=0.999 * limit)
    assert np.all(np.isfinite(GGD(dispersion=np.eye(2), beta=limit).cov))
    # the unit-covariance entropy needs only log kappa: finite below the limit
    assert math.isfinite(G.unit_cov_entropy(2, 0.005))


def test_bad_method_input():
    d = GGD(np.eye(3), beta=2.0)
    for split in (0, 3, -1, 1.5):
        with pytest.raises(ValueError, match="split"):
            d.mi(split)
    with pytest.raises(ValueError, match="shape"):
        d.logpdf(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        d.logpdf([0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="shape"):
        d.marginal_logpdf(np.zeros((4, 3)), [0, 1])
    with pytest.raises(ValueError, match="idx"):
        d.marginal_entropy([0, 0])
    with pytest.raises(ValueError, match="idx"):
        d.marginal_entropy([5])
    with pytest.raises(ValueError, match="n_samples"):
        d.sample(0, seed=0)
    with pytest.raises(ValueError, match="u must be"):
        G.marginal_log_generator(-1.0, 1, 2, 1.0)
    with pytest.raises(ValueError, match="k=3 exceeds"):
        G.standard_marginal_entropy(3, 2, 1.0)
    with pytest.raises(ValueError, match="dim_x"):
        G.mi_gap(1.0, 0, 2)
