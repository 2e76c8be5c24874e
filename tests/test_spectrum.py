import numpy as np
import pytest
import torch

from mitools.spectrum import (
    CovarianceAccumulator,
    collapse_report,
    effective_rank,
    eigvalsh_rank_one_pair,
    embedding_spectrum,
    normalized_std,
    report_from_accumulator,
    uniformity,
)


def _flat_rank(n: int, d: int, r: int, seed: int = 0) -> np.ndarray:
    """n x d matrix whose nonzero singular values are r ones."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))
    v, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return u @ v.T


def _rankme_numpy(z: np.ndarray, eps: float = 1e-7, power: int = 1) -> float:
    s = np.linalg.svd(z, compute_uv=False) ** power
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("r", [1, 8, 64])
def test_rankme_flat_spectra(r):
    z = _flat_rank(200, 128, r, seed=r)
    value = effective_rank(z)
    assert abs(value - r) / r < 0.10
    assert value == pytest.approx(_rankme_numpy(z), rel=1e-12)
    # eps = 0 (Roy & Vetterli): a flat rank-r spectrum has effective rank exactly r.
    assert effective_rank(z, eps=0.0) == pytest.approx(r, rel=1e-9)
    # torch input, float32, gives the same number up to float32 rounding of Z.
    assert effective_rank(torch.from_numpy(z).float()) == pytest.approx(value, rel=1e-4)


def test_rankme_conventions_and_invariances():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 32)) * np.geomspace(1.0, 1e-2, 32)  # decaying spectrum
    rankme = effective_rank(z)
    squared = effective_rank(z, convention="squared")
    assert squared == pytest.approx(_rankme_numpy(z, power=2), rel=1e-12)
    # Squaring concentrates the distribution: the entropy of the escort p^2 is lower.
    assert squared < rankme
    assert effective_rank(5.0 * z) == pytest.approx(rankme, rel=1e-10)
    assert effective_rank(z[rng.permutation(300)]) == pytest.approx(rankme, rel=1e-10)
    # Centring matters when the embeddings share a large mean.
    shifted = z + 100.0
    uncentred = effective_rank(shifted)
    assert uncentred == pytest.approx(_rankme_numpy(shifted), rel=1e-9)
    assert uncentred < 1.5  # dominated by the mean direction (measured 1.105)
    centred = effective_rank(shifted, center=True)
    assert centred == pytest.approx(_rankme_numpy(shifted - shifted.mean(0)), rel=1e-9)
    assert centred > 5
    # All-equal embeddings: rank ~1 uncentred, 0 once centred.
    const = np.ones((10, 4))
    assert effective_rank(const) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(const, center=True) == 0.0
    with pytest.raises(ValueError, match="convention"):
        effective_rank(z, convention="entropy")


def test_normalized_std_isotropic_and_collapsed():
    rng = np.random.default_rng(1)
    d = 64
    z = rng.standard_normal((20000, d))
    assert normalized_std(z) == pytest.approx(1 / np.sqrt(d), rel=0.02)
    zt = torch.from_numpy(z)
    direct = (zt / zt.norm(dim=1, keepdim=True)).std(dim=0).mean().item()  # SimSiam's code
    assert normalized_std(zt) == pytest.approx(direct, rel=1e-12)
    const = np.tile(rng.standard_normal(d), (100, 1))
    assert normalized_std(const) < 1e-12
    # A zero row does not produce NaN.
    z0 = z[:50].copy()
    z0[0] = 0.0
    assert np.isfinite(normalized_std(z0))


def test_embedding_spectrum_matches_covariance_eigenvalues():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 3.0
    spec = embedding_spectrum(z)
    ref = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(spec.covariance_eigenvalues, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        spec.singular_values, np.linalg.svd(z - z.mean(0), compute_uv=False), rtol=1e-10
    )
    raw = embedding_spectrum(z, center=False)
    ref_raw = np.sort(np.linalg.eigvalsh(z.T @ z / 40))[::-1]
    np.testing.assert_allclose(raw.covariance_eigenvalues, ref_raw, rtol=1e-10)
    normed = embedding_spectrum(z, center=True, normalize=True)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    ref_n = np.sort(np.linalg.eigvalsh(np.cov(zn, rowvar=False)))[::-1]
    np.testing.assert_allclose(normed.covariance_eigenvalues, ref_n, rtol=1e-9, atol=1e-14)
    assert normed.normalized and normed.centered and normed.dim == 6 and normed.n_samples == 40
    # Fewer samples than dims: d eigenvalues, the last d - n + 1 are zero after centring.
    small = embedding_spectrum(rng.standard_normal((3, 5)))
    assert small.covariance_eigenvalues.shape == (5,) and small.singular_values.shape == (3,)
    assert np.all(small.covariance_eigenvalues[3:] == 0.0)
    assert small.covariance_eigenvalues[2] < 1e-12  # rank n - 1 after centring


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (np.zeros(5), "2-D"),
        (np.zeros((1, 4)), "at least 2 samples"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "non-finite"),
        (np.array([["a", "b"], ["c", "d"]]), "real numeric"),
        (torch.zeros(2, 3, 4), "2-D"),
    ],
)
def test_input_validation(bad, pattern):
    for fn in (effective_rank, normalized_std, embedding_spectrum):
        with pytest.raises(ValueError, match=pattern):
            fn(bad)


# ----------------------------------------------------------------------------- streamed report


def test_eigvalsh_rank_one_pair_matches_two_dense_eigvalsh():
    rng = np.random.default_rng(5)
    for d in (1, 2, 3, 60):
        a = rng.standard_normal((d, d))
        low = rng.standard_normal((d, max(1, d // 4)))
        for c in (a + a.T, low @ low.T):  # indefinite; positive semi-definite, rank-deficient
            for v in (rng.standard_normal(d), np.zeros(d), 1e6 * rng.standard_normal(d)):
                eig_c, eig_g = eigvalsh_rank_one_pair(c, v)
                tol = 1e-12 * (np.linalg.norm(c, 2) + v @ v)
                np.testing.assert_allclose(eig_c, np.linalg.eigvalsh(c), rtol=0, atol=tol)
                ref = np.linalg.eigvalsh(c + np.outer(v, v))
                np.testing.assert_allclose(eig_g, ref, rtol=0, atol=tol)
    # With |v| >> ||C|| the spectrum of C is still resolved to eps ||C||, not eps |v|^2.
    c = np.diag(np.geomspace(1.0, 1e-6, 20))
    eig_c, eig_g = eigvalsh_rank_one_pair(c, 1e8 * np.ones(20))
    np.testing.assert_allclose(eig_c, np.sort(np.diag(c)), rtol=1e-9)
    assert eig_g[-1] == pytest.approx(20 * 1e16, rel=1e-12)


def _spectrum_case(kind: str, n: int = 2000, d: int = 256, seed: int = 0) -> np.ndarray:
    """float64 n x d with covariance eigenvalues lam_k in a random basis plus a mean."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    k = np.arange(1, d + 1, dtype=float)
    lam = {
        "flat": np.ones(d),
        "power0.5": k**-0.5,
        "power1": k**-1.0,
        "power2": k**-2.0,
        "rank8": (k <= 8).astype(float),
        "large_mean": k**-1.0,
    }[kind]
    z = (rng.standard_normal((n, d)) * np.sqrt(lam)) @ basis.T
    # large_mean: mean 1e3 per dimension against a spread <= 1 (Z'Z - n mu mu' would cancel).
    return z + (1e3 if kind == "large_mean" else 0.1) * rng.standard_normal(d)


def _truth(z64: np.ndarray) -> dict:
    """Independent reference: float64 SVDs (LAPACK gesdd) of Z and of the centred Z."""
    n = z64.shape[0]
    s = np.linalg.svd(z64, compute_uv=False)
    cov = np.linalg.svd(z64 - z64.mean(0), compute_uv=False) ** 2 / (n - 1)
    p = s / s.sum() + 1e-7
    positive = int(np.sum(cov > 1e-10 * cov[0]))
    x, y = np.log(np.arange(1, positive + 1)), np.log(cov[:positive])
    slope, _ = np.polyfit(x, y, 1)
    zn = z64 / np.linalg.norm(z64, axis=1, keepdims=True)
    return {
        "rankme": float(np.exp(-np.sum(p * np.log(p)))),
        "pr": float(cov.sum() ** 2 / np.sum(cov**2)),
        "alpha": float(-slope),
        "nrank": int(np.sum(s > 1e-4 * s[0])),
        "nstd": float(zn.std(axis=0, ddof=1).mean()),
        "cov": cov,
    }


# (RankMe rel, participation ratio rel, alpha-ReQ abs, normalised std rel); measured errors are
# 10-1000x below (float64: <= 3e-9 RankMe; float32: <= 3e-6 RankMe, 2e-7 PR and alpha).
_TOLERANCES = {"float64": (1e-6, 1e-8, 1e-8, 1e-10), "float32": (1e-4, 1e-5, 1e-5, 1e-6)}


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["flat", "power0.5", "power1", "power2", "rank8", "large_mean"])
def test_streamed_report_matches_float64_svd(kind, precision):
    z = _spectrum_case(kind)
    if precision == "float32":
        z = z.astype(np.float32)  # the truth is the float64 SVD of these float32 numbers
    ref = _truth(z.astype(np.float64))
    acc = CovarianceAccumulator()  # "auto": float32 data -> float32 Gram
    for i in range(0, z.shape[0], 700):  # uneven batches
        acc.update(torch.from_numpy(z[i : i + 700]))
    assert acc.working_dtype == getattr(torch, precision)
    rep = report_from_accumulator(acc)
    rank_tol, pr_tol, alpha_tol, nstd_tol = _TOLERANCES[precision]
    assert rep.effective_rank == pytest.approx(ref["rankme"], rel=rank_tol)
    assert rep.participation_ratio == pytest.approx(ref["pr"], rel=pr_tol)
    assert rep.alpha_req is not None
    assert rep.alpha_req.alpha == pytest.approx(ref["alpha"], abs=alpha_tol)
    assert rep.numerical_rank == ref["nrank"]
    assert rep.normalized_std == pytest.approx(ref["nstd"], rel=nstd_tol)
    if kind == "rank8":
        assert rep.numerical_rank == 9  # 8 directions plus the mean (uncentred)
        assert rep.alpha_req.n_points == 8  # centred: exactly the 8 directions
    # Gram rounding (module docstring): float32 moves the eigenvalues by <= 0.31 eps_32 ||S||
    # (measured; S the shifted scatter ~ the centred one), a quarter of the floor below which
    # they are zeroed; float64 by far less than the floor max(n, d) eps_64 ||S||.
    n, d = z.shape
    bound = np.finfo(np.float32).eps if precision == "float32" else n * np.finfo(float).eps
    scale = ref["cov"][0] * (n - 1)
    eig = np.linalg.eigvalsh(acc.gram(center=True))[::-1]
    assert np.max(np.abs(eig - ref["cov"] * (n - 1))) < bound * scale


def test_precision_choice_and_validation():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((300, 16))
    for data, dtype in (
        (z, torch.float64),
        (z.astype(np.float32), torch.float32),
        (torch.from_numpy(z).half(), torch.float32),
        (torch.from_numpy(z).bfloat16(), torch.float32),
        ((10 * z).astype(np.int64), torch.float64),
    ):
        assert CovarianceAccumulator().update(data).working_dtype == dtype
    acc = CovarianceAccumulator(precision="float32").update(z)
    assert acc.working_dtype == torch.float32
    forced = CovarianceAccumulator(precision="float64").update(z.astype(np.float32))
    exact = _truth(z.astype(np.float32).astype(np.float64))
    spec = forced.spectrum(center=True)
    np.testing.assert_allclose(spec.covariance_eigenvalues, exact["cov"], rtol=1e-10)
    with pytest.raises(ValueError, match="precision"):
        CovarianceAccumulator(precision="float16")
    with pytest.raises(ValueError, match="precision"):
        collapse_report(z, precision="double")
    with pytest.raises(ValueError, match="precision"):
        uniformity(z, precision="half")
    # The spectrum is cached per update and recomputed after the next one.
    first = acc.spectrum().covariance_eigenvalues.copy()
    acc.update(z[:50])
    assert acc.n == 350 and not np.array_equal(acc.spectrum().covariance_eigenvalues, first)


def test_float32_uniformity_and_report_agree_with_float64():
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((1000, 256)) * np.geomspace(1.0, 0.05, 256) + 0.3).astype(np.float32)
    u64 = uniformity(z, max_samples=None)  # float64 default
    assert uniformity(z, max_samples=None, precision="auto") == pytest.approx(u64, abs=1e-5)
    r32 = collapse_report(z, uniformity_samples=None)  # auto: float32 for float32 input
    r64 = collapse_report(z, uniformity_samples=None, precision="float64")
    assert r32.uniformity == pytest.approx(u64, abs=1e-5)
    assert r64.uniformity == pytest.approx(u64, rel=1e-12)
    assert r32.effective_rank == pytest.approx(r64.effective_rank, rel=1e-6)
    assert r32.numerical_rank == r64.numerical_rank == 256
    assert r32.verdict == r64.verdict == "healthy"


@pytest.mark.parametrize("t", [0.5, 2.0])
def test_uniformity_lower_bound_is_attained_by_the_regular_simplex(t):
    """Range of ``log mean_{i != j} exp(-t |u_i - u_j|^2)`` for n unit rows: sum_{i != j} u_i.u_j
    = |sum u|^2 - n >= -n, so the mean squared distance is <= 2n/(n-1) and, by Jensen, the
    uniformity is >= -2t n/(n-1), with equality iff all distances are equal and sum u = 0 (the
    regular simplex, n <= d + 1). n = 2 antipodal rows give -4t, below the former "-2t" claim."""
    assert uniformity(np.array([[1.0, 0.0], [-3.0, 0.0]]), t=t) == pytest.approx(-4 * t, rel=1e-12)
    for n in (2, 3, 5, 17):
        bound = -2 * t * n / (n - 1)
        # regular simplex: centred standard basis of R^n (rows scaled arbitrarily: normalised
        # inside), embedded in d = n + 3 dims and rotated
        simplex = np.eye(n) - 1.0 / n
        rot, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((n + 3, n + 3)))
        z = np.hstack([simplex, np.zeros((n, 3))]) @ rot.T * np.arange(1, n + 1)[:, None]
        assert uniformity(z, t=t, max_samples=None) == pytest.approx(bound, rel=1e-12)
        # any other configuration stays above the bound (and below 0)
        rng = np.random.default_rng(100 + n)
        for d in (1, 2, n + 3):
            u = uniformity(rng.standard_normal((n, d)), t=t, max_samples=None)
            assert bound - 1e-12 <= u <= 0.0
