"""Collapse statistics against closed forms, dense computations and brute force."""

import math
import warnings

import numpy as np
import pytest
import torch

from mitools.spectrum import (
    CollapseThresholds,
    CovarianceAccumulator,
    StreamingSpectrum,
    alignment,
    alpha_req,
    alpha_req_from_eigenvalues,
    collapse_report,
    effective_rank,
    embedding_spectrum,
    normalized_std,
    numerical_rank,
    participation_ratio,
    report_from_accumulator,
    uniformity,
)


def _orthonormal(n: int, k: int, rng: np.random.Generator, centred: bool = False) -> np.ndarray:
    """n x k with orthonormal columns (orthogonal to the ones vector when ``centred``)."""
    if centred:
        q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.standard_normal((n, k))]))
        return q[:, 1:]
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def _with_singular_values(n: int, d: int, s: np.ndarray, seed: int, centred: bool = False):
    rng = np.random.default_rng(seed)
    u = _orthonormal(n, s.size, rng, centred)
    v = _orthonormal(d, s.size, rng)
    return (u * s) @ v.T


@pytest.mark.parametrize("r", [1, 8, 64, 512])
def test_effective_rank_of_flat_rank_r_in_2048_dims(r):
    z = _with_singular_values(600, 2048, np.ones(r), seed=r)
    value = effective_rank(z)
    assert abs(value - r) / r < 0.10
    assert numerical_rank(z) == r
    assert participation_ratio(z) == pytest.approx(r, rel=0.02)  # centring perturbs slightly
    if r == 64:  # the report's streamed path (two 2048 x 2048 eigendecompositions): once
        with pytest.warns(RuntimeWarning, match="rank-limited"):  # 600 samples < 2048 dims
            report = collapse_report(z, uniformity_samples=256)
        # RankMe's eps adds at most (m - r) eps log(1/eps) nats (m = 600); Gram vs SVD: rounding.
        assert report.effective_rank == pytest.approx(value, rel=1e-9)
        assert report.numerical_rank == r
        assert report.verdict == "dimensional_collapse"  # 64 / 600 < 0.25


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_exact_power_law(alpha):
    d = 256
    lam = np.arange(1, d + 1, dtype=float) ** -alpha
    n = 2048
    # Centred columns with covariance eigenvalues exactly lam: s_k^2 / (n - 1) = lam_k.
    z = _with_singular_values(n, d, np.sqrt(lam * (n - 1)), seed=3, centred=True)
    fit = alpha_req(z)
    assert abs(fit.alpha - alpha) < 0.05
    assert fit.alpha == pytest.approx(alpha, abs=1e-8)  # exact construction: exact fit
    assert fit.r_squared == pytest.approx(1.0, abs=1e-10)
    assert fit.fit_range == (1, d) and fit.n_points == d


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_sampled_gaussian(alpha):
    # Sampled, not constructed: n >> d so sample eigenvalues follow the population ones.
    rng = np.random.default_rng(int(alpha * 10))
    d, n = 64, 40_000
    lam = np.arange(1, d + 1, dtype=float) ** -alpha
    z = rng.standard_normal((n, d)) * np.sqrt(lam)
    fit = alpha_req(z)
    assert abs(fit.alpha - alpha) < 0.05
    assert fit.r_squared > 0.99
    report = collapse_report(z, uniformity_samples=512)
    assert report.alpha_req is not None
    assert report.alpha_req.alpha == pytest.approx(fit.alpha, rel=1e-8)


def test_alpha_req_fit_range_and_errors():
    lam = np.r_[10.0, 5.0, np.arange(3, 51, dtype=float) ** -1.0]  # first two off the law
    fit = alpha_req_from_eigenvalues(lam, fit_range=(3, 50))
    assert fit.alpha == pytest.approx(1.0, abs=1e-12) and fit.r_squared == pytest.approx(1.0)
    assert alpha_req_from_eigenvalues(lam).r_squared < 0.99
    with pytest.raises(ValueError, match="fit_range"):
        alpha_req_from_eigenvalues(lam, fit_range=(0, 10))
    with pytest.raises(ValueError, match="rank-limited"):
        alpha_req_from_eigenvalues(np.r_[1.0, 0.5, 0.0], fit_range=(1, 3))


def test_participation_ratio_and_numerical_rank_closed_forms():
    rng = np.random.default_rng(0)
    lam = np.array([4.0, 2.0, 1.0, 1.0, 0.0, 0.0])
    z = _with_singular_values(500, 6, np.sqrt(lam[:4] * 499), seed=1, centred=True)
    assert participation_ratio(z) == pytest.approx(8.0**2 / (16 + 4 + 1 + 1), rel=1e-10)
    assert numerical_rank(z) == 4
    assert numerical_rank(z, tol=np.sqrt(1.5 * 499)) == 2  # absolute tolerance on sigma
    full = rng.standard_normal((300, 20))
    assert numerical_rank(full) == np.linalg.matrix_rank(full) == 20
    assert participation_ratio(np.ones((10, 4))) == 0.0  # centred: no variance at all


def test_alignment_and_uniformity_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 5))
    y = x + 0.3 * rng.standard_normal((40, 5))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)
    brute_align = np.mean([np.sum((a - b) ** 2) for a, b in zip(u, v, strict=True)])
    assert alignment(x, y) == pytest.approx(brute_align, rel=1e-12)
    assert alignment(x, y, alpha=1) == pytest.approx(np.mean(np.linalg.norm(u - v, axis=1)))
    pairs = [np.exp(-2 * np.sum((u[i] - u[j]) ** 2)) for i in range(40) for j in range(i + 1, 40)]
    assert uniformity(x) == pytest.approx(np.log(np.mean(pairs)), rel=1e-12)
    # Same as Wang & Isola's torch.pdist code.
    ref = torch.pdist(torch.from_numpy(u), p=2).pow(2).mul(-2).exp().mean().log()
    assert uniformity(torch.from_numpy(x)) == pytest.approx(float(ref), rel=1e-12)
    assert uniformity(np.ones((10, 3))) == pytest.approx(0.0, abs=1e-12)  # collapsed: maximum
    # Uniform on the high-dim sphere: |u_i - u_j|^2 ~ 2, so uniformity ~ -2t = -4.
    big = rng.standard_normal((500, 512))
    assert uniformity(big) == pytest.approx(-4.0, abs=0.05)
    with pytest.raises(ValueError, match="same shape"):
        alignment(x, y[:10])


def test_verdicts():
    rng = np.random.default_rng(2)
    constant = np.tile(rng.standard_normal(128), (300, 1))
    r = collapse_report(constant)
    assert r.verdict == "complete_collapse" and r.collapsed
    assert r.normalized_std == pytest.approx(0.0, abs=1e-12)
    assert r.effective_rank < 1.01
    assert collapse_report(np.zeros((50, 16))).verdict == "complete_collapse"

    low = _with_singular_values(2000, 512, np.ones(8), seed=4) + 0.0
    r = collapse_report(low, uniformity_samples=512)
    assert r.verdict == "dimensional_collapse"
    assert r.numerical_rank == 8
    assert any("effective rank" in reason for reason in r.reasons)

    healthy = rng.standard_normal((2000, 128))
    r = collapse_report(healthy, healthy + 0.1 * rng.standard_normal((2000, 128)))
    assert r.verdict == "healthy" and not r.collapsed
    assert r.normalized_std == pytest.approx(1 / math.sqrt(128), rel=0.02)
    assert r.alignment is not None and r.alignment < 0.05
    d = r.to_dict()
    assert d["verdict"] == "healthy" and len(d["singular_values"]) == 128
    assert "singular_values" not in r.to_dict(spectra=False)

    # Thresholds are overridable: demanding 90% of the dimensions flags the rank-8 Gaussian.
    part = rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 16))
    assert collapse_report(part).verdict == "healthy"  # 8 of 16: above both defaults
    strict = CollapseThresholds(dimensional_rank_fraction=0.9)
    assert collapse_report(part, thresholds=strict).verdict == "dimensional_collapse"
    loose = CollapseThresholds(complete_effective_rank=0.0, complete_nstd_factor=0.0)
    assert collapse_report(constant, thresholds=loose).verdict == "dimensional_collapse"


def test_fewer_samples_than_dimensions_warns():
    z = np.random.default_rng(3).standard_normal((50, 128))
    with pytest.warns(RuntimeWarning, match="rank-limited"):
        r = collapse_report(z)
    assert r.warnings and "rank-limited" in r.warnings[0]
    assert r.singular_values.size == 50
    assert r.effective_rank_fraction == pytest.approx(r.effective_rank / 50)


@pytest.mark.parametrize("n,d,offset", [(1000, 64, 0.5), (40, 64, 0.5), (500, 32, 1e3)])
def test_streaming_equals_in_memory(n, d, offset):
    rng = np.random.default_rng(n)
    # offset 1e3: mean >> spread, where Z'Z - n mu mu' would cancel catastrophically.
    z = rng.standard_normal((n, d)) * np.geomspace(3.0, 0.01, d) + offset
    acc = StreamingSpectrum()
    assert CovarianceAccumulator is StreamingSpectrum
    start = 0
    for size in [1, 7, 300, 1, 10_000]:  # uneven batches, including single rows
        acc.update(torch.from_numpy(z[start : start + size]))
        start += size
        if start >= n:
            break
    assert acc.n == n
    for center in (False, True):
        dense = embedding_spectrum(z, center=center)
        streamed = acc.spectrum(center=center)
        # The Gram resolves sigma_k^2 to ~max(n, d) eps sigma_max^2 absolute (module docstring).
        floor = 10 * max(n, d) * np.finfo(float).eps * dense.singular_values[0] ** 2
        np.testing.assert_allclose(
            streamed.singular_values**2, dense.singular_values**2, rtol=1e-8, atol=floor
        )
        np.testing.assert_allclose(
            streamed.covariance_eigenvalues,
            dense.covariance_eigenvalues,
            rtol=1e-8,
            atol=floor / (n - 1 if center else n),
        )
    assert acc.normalized_std() == pytest.approx(normalized_std(z), rel=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = report_from_accumulator(acc)
        mem = collapse_report(z)
    for conv, value in (
        ("rankme", report.effective_rank),
        ("squared", report.effective_rank_squared),
    ):
        assert value == pytest.approx(effective_rank(z, convention=conv), rel=1e-9)
        assert value == pytest.approx(
            getattr(mem, "effective_rank" + ("" if conv == "rankme" else "_squared")), rel=1e-9
        )
    assert report.participation_ratio == pytest.approx(participation_ratio(z), rel=1e-9)
    assert report.numerical_rank == numerical_rank(z)
    assert report.verdict == mem.verdict


def test_accumulator_errors():
    acc = CovarianceAccumulator()
    with pytest.raises(ValueError, match="at least 2"):
        acc.spectrum()
    acc.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="columns"):
        acc.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="non-finite"):
        collapse_report(np.array([[1.0, np.inf], [0.0, 1.0]]))


def test_synthetic_reports_give_the_known_verdicts():
    """analysis.collapse.synthetic_reports (notebook 05's table): healthy isotropic Gaussian,
    dimensional collapse at rank 8 (RankMe and numerical rank at most 8), complete collapse of a
    repeated row (normalised std 0)."""
    from analysis.collapse import synthetic_reports

    table = synthetic_reports(1000, d=64, rank=8, seed=0).set_index("case")
    assert list(table.index) == ["isotropic", "rank 8", "constant"]
    assert list(table["verdict"]) == ["healthy", "dimensional_collapse", "complete_collapse"]
    assert table.loc["rank 8", "numerical rank"] == 8 and table.loc["rank 8", "RankMe"] <= 8
    assert table.loc["isotropic", "RankMe"] > 0.9 * 64
    assert table.loc["constant", "normalized std"] == pytest.approx(0.0, abs=1e-12)
