"""Bad-input checks of the spectrum helpers that take a spectrum instead of an embedding matrix.

A NaN eigenvalue used to give alpha = nan with R^2 = 1.0 (a "perfect fit"), and a NaN singular
value gave RankMe = 1.0 (which reads as complete collapse); both must raise instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mitools.spectrum import alpha_req_from_eigenvalues, effective_rank_from_singular_values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_alpha_req_rejects_non_finite_eigenvalues(bad):
    with pytest.raises(ValueError, match=r"eigenvalues contains 1 non-finite values"):
        alpha_req_from_eigenvalues(np.array([1.0, 0.5, bad, 0.2, 0.1]))
    with pytest.raises(ValueError, match=r"non-finite"):  # also outside the fit range
        alpha_req_from_eigenvalues(np.array([1.0, 0.5, 0.2, 0.1, bad]), fit_range=(1, 3))


def test_alpha_req_still_accepts_rounding_negatives_outside_the_range():
    lam = np.r_[np.arange(1, 21, dtype=float) ** -1.5, -1e-17, 0.0]
    fit = alpha_req_from_eigenvalues(lam)
    assert fit.alpha == pytest.approx(1.5, abs=1e-12) and fit.n_points == 20


@pytest.mark.parametrize("convention", ["rankme", "squared"])
def test_effective_rank_from_singular_values_rejects_bad_values(convention):
    with pytest.raises(ValueError, match=r"singular_values contains 1 non-finite values"):
        effective_rank_from_singular_values(np.array([1.0, np.nan, 0.5]), convention=convention)
    with pytest.raises(ValueError, match=r"non-finite"):
        effective_rank_from_singular_values(np.array([1.0, np.inf]), convention=convention)
    # squaring would hide the sign: -1 must not pass as a singular value of 1
    with pytest.raises(ValueError, match=r"singular_values must be >= 0, got 1 negative"):
        effective_rank_from_singular_values(np.array([1.0, -1.0, 0.5]), convention=convention)
    with pytest.raises(ValueError, match=r"real numeric"):
        effective_rank_from_singular_values(np.array(["a", "b"]), convention=convention)


def test_effective_rank_from_singular_values_valid_input_unchanged():
    assert effective_rank_from_singular_values(np.ones(8), eps=0.0) == pytest.approx(8.0)
    assert effective_rank_from_singular_values(torch.ones(4, dtype=torch.float32), eps=0.0) == (
        pytest.approx(4.0)
    )
    assert effective_rank_from_singular_values(np.zeros(3)) == 0.0
