import numpy as np
import pytest
import torch

from mitools.spectrum import effective_rank, embedding_spectrum, normalized_std


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
