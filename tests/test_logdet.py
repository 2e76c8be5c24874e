"""Tests for mitools.logdet against independent truths: numpy/torch slogdet, sums of log
eigenvalues, closed-form gradients, the eigenvalue form of the truncated series, and the
geometric-tail theory of its remainder."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mitools.logdet import (
    RunningScale,
    TaylorConvergenceWarning,
    gershgorin_upper_bound,
    lambda_max_power,
    logdet_exact,
    logdet_taylor,
    order_for_tolerance,
    reset_violation_warnings,
    taylor_error_bound,
    taylor_gradient_closed_form,
    taylor_series_from_eigenvalues,
    taylor_truncation_error,
)
from mitools.op_trace import HOST_FACTORY_OPS, OpCounter

f64 = torch.float64


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=f64))
    return q * torch.sign(torch.diagonal(r))


def spd_with_spectrum(eigenvalues, seed: int = 0) -> torch.Tensor:
    lam = torch.as_tensor(eigenvalues, dtype=f64)
    Q = random_orthogonal(lam.shape[-1], seed)
    C = Q @ torch.diag(lam) @ Q.T
    return 0.5 * (C + C.T)


def geometric(d: int, kappa: float) -> torch.Tensor:
    return torch.logspace(0, -math.log10(kappa), d, dtype=f64)


def sample_cov(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=f64) @ torch.randn(d, d, generator=gen, dtype=f64)
    X = X - X.mean(0)
    return X.T @ X / (n - 1)


# ------------------------------------------------------------------------------------------
# exact
# ------------------------------------------------------------------------------------------


def test_exact_matches_slogdet_numpy_and_eigenvalues():
    C = sample_cov(200, 20, seed=1)
    ours = logdet_exact(C)
    sign, ref_torch = torch.linalg.slogdet(C)
    assert sign == 1
    ref_np = np.linalg.slogdet(C.numpy())[1]
    ref_eig = torch.log(torch.linalg.eigvalsh(C)).sum()
    assert ours.dtype == f64
    assert abs(float(ours - ref_torch)) < 1e-10
    assert abs(float(ours) - ref_np) < 1e-10
    assert abs(float(ours - ref_eig)) < 1e-9


def test_exact_batched_shapes_dtype_and_ridge():
    Cs = torch.stack(
        [torch.stack([sample_cov(60, 8, seed=10 * i + j) for j in range(4)]) for i in range(3)]
    )
    out = logdet_exact(Cs)
    assert out.shape == (3, 4)
    ref = torch.linalg.slogdet(Cs)[1]
    assert torch.allclose(out, ref, atol=1e-10)
    # float32 input: computed in float64, returned in float32
    out32 = logdet_exact(Cs.float())
    assert out32.dtype == torch.float32
    # truth for the rounded input, so this checks the float64 path (float32 result rounding only)
    ref32 = torch.linalg.slogdet(Cs.float().double())[1]
    assert torch.allclose(out32.double(), ref32, rtol=1e-6, atol=0)
    # ridge is ridge * I added first
    r = 0.3
    eye = torch.eye(8, dtype=f64)
    assert torch.allclose(
        logdet_exact(Cs, ridge=r), torch.linalg.slogdet(Cs + r * eye)[1], atol=1e-10
    )
    # numpy input accepted
    assert abs(float(logdet_exact(Cs[0, 0].numpy())) - float(ref[0, 0])) < 1e-10


def test_exact_gradient_is_inverse_and_gradcheck():
    C = sample_cov(100, 6, seed=2).requires_grad_(True)
    (g,) = torch.autograd.grad(logdet_exact(C), C)
    assert torch.allclose(g, torch.linalg.inv(C.detach()), atol=1e-10)
    C_small = sample_cov(40, 4, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda A: logdet_exact(A), (C_small,))
    batch = torch.stack([sample_cov(40, 3, seed=s) for s in range(2)]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda A: logdet_exact(A, ridge=0.1), (batch,))


def test_exact_bad_input():
    with pytest.raises(ValueError, match="square"):
        logdet_exact(torch.ones(3, 4))
    with pytest.raises(ValueError, match="shape"):
        logdet_exact(torch.ones(3))
    C = sample_cov(50, 4, seed=4)
    C[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        logdet_exact(C)
    with pytest.raises(ValueError, match="ridge"):
        logdet_exact(sample_cov(50, 4, seed=4), ridge=-1.0)
    # indefinite matrix: ValueError that suggests a ridge, never NaN
    with pytest.raises(ValueError, match="not positive definite.*ridge"):
        logdet_exact(torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=f64)))
    # a sample covariance from fewer samples than dimensions is singular: fails, ridge rescues it
    singular = sample_cov(5, 10, seed=5)
    with pytest.raises(ValueError, match="batch index"):
        logdet_exact(torch.stack([torch.eye(10, dtype=f64), singular]))
    assert torch.isfinite(logdet_exact(singular, ridge=1e-3))


# ------------------------------------------------------------------------------------------
# Taylor: series == eigenvalue formula, convergence rate, gradient
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["max_eig", "midrange", "power", "trace", 1.3])
def test_taylor_matrix_series_equals_eigenvalue_series(scale):
    lam = geometric(24, 30.0)
    C = spd_with_spectrum(lam, seed=6)
    if scale == "max_eig":
        s = lam.max()
    elif scale == "midrange":
        s = 0.5 * (lam.max() + lam.min())
    elif scale == "power":
        s = 1.05 * lambda_max_power(C)
    elif scale == "trace":
        s = lam.mean()
    else:
        s = torch.tensor(scale, dtype=f64)
    exact = float(torch.log(lam).sum())
    for K in range(1, 17):
        # "trace" leaves the region here (lambda_max/mean = 3.4): the identity must hold anyway
        series = logdet_taylor(C, K, scale=scale, on_violation="ignore")
        assert series.dtype == f64
        ref = taylor_series_from_eigenvalues(lam, K, s)
        tol = 1e-10 * max(1.0, abs(float(ref)))
        assert abs(float(series - ref)) < tol, (K, float(series), float(ref))
        # and its error is the exact remainder
        assert abs((float(series) - exact) - float(taylor_truncation_error(lam, K, s))) < tol


def test_taylor_converges_at_geometric_rate():
    # isolated smallest eigenvalue: the remainder is dominated by m = q = 1 - lambda_min/s
    lam = torch.cat([torch.tensor([0.05], dtype=f64), torch.linspace(0.5, 1.0, 15, dtype=f64)])
    C = spd_with_spectrum(lam, seed=7)
    s = 1.0
    q = 1 - 0.05
    exact = float(logdet_exact(C))
    errors = [float(logdet_taylor(C, K, scale=s)) - exact for K in range(1, 121)]
    # s = lambda_max: every term positive, the series over-estimates and decreases monotonically
    assert all(e > 0 for e in errors)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))
    ratios = [b / a for a, b in zip(errors, errors[1:], strict=False)]
    # theory: ratio <= q always (every m_i <= q); it tends to q
    assert max(ratios) <= q + 1e-9
    assert abs(ratios[-1] - q) < 0.01
    assert errors[-1] < 2e-3
    # the bound holds at every order
    for K, e in enumerate(errors, start=1):
        assert e <= taylor_error_bound(K, s, 0.05, 1.0, 16) * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_error_bound_dominates_actual_error_with_both_signs(seed):
    gen = torch.Generator().manual_seed(seed)
    d = 12
    lam = torch.rand(d, generator=gen, dtype=f64) * 1.7 + 0.2
    for s in (float(lam.max()), float(lam.mean()), 1.05):  # ratios on both sides of 1
        for K in range(0, 30):
            actual = abs(float(taylor_truncation_error(lam, K, s)))
            bound = taylor_error_bound(K, s, float(lam.min()), float(lam.max()), d)
            assert actual <= bound * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9, 0.99])
def test_error_bound_is_tight_for_one_extreme_eigenvalue(q):
    # One ratio m = 1 - lambda/s = q > 0: R_K = sum_{k>K} q^k/k >= q^(K+1)/(K+1) (its first term),
    # and the bound is B_K = q^(K+1)/((K+1)(1-q)), so R_K <= B_K <= R_K/(1-q): the bound is
    # within a factor 1/(1-q) of the truth at every order. Also for d equal eigenvalues (d R_K vs
    # d B_K) and for one extreme eigenvalue among d with m = 0 (R_K vs d B_K <= d R_K/(1-q)).
    # With m = -q (s < lambda) the tail alternates with decreasing terms, so
    # |R_K| >= q^(K+1)/(K+1) - q^(K+2)/(K+2) >= (1-q) q^(K+1)/(K+1), i.e. B_K <= |R_K|/(1-q)^2.
    # R_K from the closed form -log(1 - m) - sum_{k<=K} m^k/k at 30 digits beyond the
    # cancellation (R_K ~ q^(K+1), so (K+1) |log10 q| + 30 digits).
    mpmath = pytest.importorskip("mpmath")
    d = 6
    for s in (1.0, 2.5):
        for K in (0, 1, 2, 5, 10, 40, 100):
            for sign in (1, -1):
                with mpmath.workdps(30 + math.ceil((K + 1) * -math.log10(q))):
                    m = mpmath.mpf(sign * q)
                    tail = -mpmath.log1p(-m) - mpmath.fsum(m**k / k for k in range(1, K + 1))
                    exact_tail = float(tail)
                lam = s * (1.0 - sign * q)
                one = taylor_error_bound(K, s, lam, lam, 1)
                ours = float(taylor_truncation_error(torch.tensor([lam], dtype=f64), K, s))
                assert ours == pytest.approx(exact_tail, rel=1e-9)
                actual = abs(exact_tail)
                assert actual <= one * (1 + 1e-12)
                loss = (1 - q) if sign > 0 else (1 - q) ** 2
                assert one <= actual / loss * (1 + 1e-12), (s, K, sign, one, actual)
                if sign < 0:
                    continue
                # d equal eigenvalues; one extreme eigenvalue with the others at s (m = 0)
                assert taylor_error_bound(K, s, lam, lam, d) <= d * actual / (1 - q) * (1 + 1e-12)
                spectrum = torch.tensor([lam] + [s] * (d - 1), dtype=f64)
                assert float(taylor_truncation_error(spectrum, K, s)) == pytest.approx(
                    exact_tail, rel=1e-9
                )
                assert taylor_error_bound(K, s, lam, s, d) <= d * actual / (1 - q) * (1 + 1e-12)


def test_order_for_tolerance_is_minimal_and_sufficient():
    lam = geometric(32, 20.0)
    s = float(lam.max())
    for tol in (1e-1, 1e-3, 1e-6):
        K = order_for_tolerance(tol, s, float(lam.min()), s, 32)
        assert taylor_error_bound(K, s, float(lam.min()), s, 32) <= tol
        assert K == 0 or taylor_error_bound(K - 1, s, float(lam.min()), s, 32) > tol
        assert abs(float(taylor_truncation_error(lam, K, s))) <= tol
    with pytest.raises(ValueError, match="does not converge"):
        order_for_tolerance(1e-3, 1.0, 0.5, 2.5, 4)
    assert taylor_error_bound(3, 1.0, 0.5, 2.5, 4) == math.inf


def test_truncation_error_closed_form_matches_mpmath_tail():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    lam = [0.03, 0.4, 1.0, 1.6]
    s = 1.0

    def tail(m, K):  # direct high-precision summation of the tail, to 1e-30
        n_terms = int(mpmath.ceil(mpmath.log(mpmath.mpf(10) ** -30) / mpmath.log(abs(m)))) + K + 2
        return mpmath.fsum(m**k / k for k in range(K + 1, n_terms))

    for K in (0, 3, 10, 40):
        ref = sum(tail(mpmath.mpf(1) - mpmath.mpf(x) / s, K) for x in lam)
        ours = float(taylor_truncation_error(torch.tensor(lam, dtype=f64), K, s))
        assert abs(ours - float(ref)) <= 1e-12 * max(1.0, abs(float(ref)))


def test_taylor_gradient_closed_form_and_gradcheck():
    C = spd_with_spectrum(torch.linspace(0.2, 1.0, 7, dtype=f64), seed=8).requires_grad_(True)
    for K in (1, 2, 5, 8):
        (g,) = torch.autograd.grad(logdet_taylor(C, K, scale=1.1), C)
        ref = taylor_gradient_closed_form(C.detach(), K, 1.1)
        assert torch.allclose(g, ref, atol=1e-10)
    # K -> large: gradient -> C^{-1}
    (g,) = torch.autograd.grad(logdet_taylor(C, 200, scale=1.1), C)
    assert torch.allclose(g, torch.linalg.inv(C.detach()), atol=1e-8)
    small = spd_with_spectrum(torch.tensor([0.3, 0.7, 1.1, 0.9], dtype=f64), seed=9)
    small.requires_grad_(True)
    # scale is detached by design, so gradcheck uses a fixed numeric scale
    assert torch.autograd.gradcheck(lambda A: logdet_taylor(A, 5, scale=1.2), (small,))
    batch = torch.stack([small.detach(), 2 * small.detach()]).requires_grad_(True)
    scale = torch.tensor([1.2, 2.4], dtype=f64)
    assert torch.autograd.gradcheck(lambda A: logdet_taylor(A, 4, scale=scale), (batch,))


def test_taylor_batched_and_float32():
    lam_sets = [geometric(10, k) for k in (2.0, 5.0, 10.0)]
    Cs = torch.stack([spd_with_spectrum(lam, seed=i) for i, lam in enumerate(lam_sets)])
    Cs = torch.stack([Cs, 3 * Cs])  # (2, 3, 10, 10)
    out = logdet_taylor(Cs, 6, scale="max_eig")
    assert out.shape == (2, 3)
    for a in range(2):
        for b in range(3):
            lam = lam_sets[b] * (3 if a else 1)
            ref = taylor_series_from_eigenvalues(lam, 6, lam.max())
            assert abs(float(out[a, b] - ref)) < 1e-10
    out32 = logdet_taylor(Cs.float(), 6, scale="max_eig")
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), out, atol=1e-4)
    # float64=True computes in float64 and returns float32
    assert torch.allclose(
        logdet_taylor(Cs.float(), 6, scale="max_eig", float64=True).double(), out, atol=1e-5
    )


# ------------------------------------------------------------------------------------------
# failure mode outside the convergence region and the three policies
# ------------------------------------------------------------------------------------------


def dominant_spectrum() -> torch.Tensor:
    # one eigenvalue 6x the others: with s = tr/d = 0.75, lambda_max/s = 4 > 2
    lam = torch.full((10,), 0.5, dtype=f64)
    lam[0] = 3.0
    return lam


def test_trace_scale_outside_region_diverges():
    lam = dominant_spectrum()
    C = spd_with_spectrum(lam, seed=11)
    s = float(lam.mean())
    assert lam.max() / s > 2
    exact = float(torch.log(lam).sum())
    errs = [
        abs(float(logdet_taylor(C, K, scale="trace", on_violation="ignore")) - exact)
        for K in (4, 8, 16, 32)
    ]
    assert errs[0] < errs[1] < errs[2] < errs[3]
    assert errs[-1] > 1e3
    # the divergent series still equals the eigenvalue formula (no silent clipping)
    for K in (4, 16):
        val = logdet_taylor(C, K, scale="trace", on_violation="ignore")
        assert abs(float(val - taylor_series_from_eigenvalues(lam, K, s))) < 1e-8 * max(
            1.0, abs(float(val))
        )


def test_on_violation_raise_warn_clamp():
    lam = dominant_spectrum()
    C = spd_with_spectrum(lam, seed=12)
    ratio = float(lam.max() / lam.mean())
    with pytest.raises(ValueError, match=f"lambda_max/s = {ratio:.4g}"):
        logdet_taylor(C, 4, scale="trace", on_violation="raise")
    # a user scale is checked too
    with pytest.raises(ValueError, match="convergence region"):
        logdet_taylor(C, 4, scale=1.0, on_violation="raise")
    reset_violation_warnings()
    with pytest.warns(TaylorConvergenceWarning, match="lambda_max/s = 4 "):
        first = logdet_taylor(C, 4, scale="trace")
    assert abs(float(first - taylor_series_from_eigenvalues(lam, 4, lam.mean()))) < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logdet_taylor(C, 4, scale="trace")  # warns once per rule: no second warning
    reset_violation_warnings()
    # clamp: s raised so lambda_max/s <= (2 - margin)/safety, and the series converges again
    exact = float(torch.log(lam).sum())
    errs = []
    for K in (4, 16, 64, 256):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            val = logdet_taylor(C, K, scale="trace", on_violation="clamp", margin=0.1)
        errs.append(abs(float(val) - exact))
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[-1] < 1e-6
    s_est = 1.05 * lambda_max_power(C) / 1.9
    val = logdet_taylor(C, 8, scale="trace", on_violation="clamp", margin=0.1)
    assert abs(float(val - taylor_series_from_eigenvalues(lam, 8, s_est))) < 1e-10
    assert float(lam.max() / s_est) <= 1.9 / 1.05 + 1e-6
    # a spectrum inside the region is left alone by clamp
    inside = spd_with_spectrum(geometric(10, 3.0), seed=13)
    a = logdet_taylor(inside, 6, scale="trace", on_violation="clamp")
    b = logdet_taylor(inside, 6, scale="trace", on_violation="ignore")
    assert float(a) == float(b)


def test_non_positive_definite_with_eigen_rule():
    C = torch.diag(torch.tensor([1.0, 0.5, -0.1], dtype=f64))
    with pytest.raises(ValueError, match="non-positive eigenvalue"):
        logdet_taylor(C, 4, scale="max_eig", on_violation="raise")
    with pytest.raises(ValueError, match="ridge"):
        logdet_taylor(C, 4, scale="max_eig", on_violation="clamp")


def test_clamp_is_per_batch_entry():
    bad = spd_with_spectrum(dominant_spectrum(), seed=14)
    good = spd_with_spectrum(geometric(10, 3.0), seed=15)
    both = logdet_taylor(torch.stack([bad, good]), 6, scale="trace", on_violation="clamp")
    alone = logdet_taylor(good, 6, scale="trace", on_violation="ignore")
    assert float(both[1]) == pytest.approx(float(alone), abs=1e-12)


# ------------------------------------------------------------------------------------------
# spectrum estimates and RunningScale
# ------------------------------------------------------------------------------------------


def test_power_iteration_and_gershgorin_bracket_lambda_max():
    for seed in range(3):
        C = sample_cov(300, 30, seed=20 + seed)
        lmax = float(torch.linalg.eigvalsh(C)[-1])
        est = float(lambda_max_power(C, 50))
        assert est <= lmax * (1 + 1e-12)
        assert est >= 0.99 * lmax
        assert float(gershgorin_upper_bound(C)) >= lmax


def test_running_scale_ema_math_eval_mode_and_state_dict():
    rs = RunningScale(momentum=0.9, safety=1.1, power_iters=60)
    lmaxes = [2.0, 4.0, 1.0]
    expected = None
    for i, lm in enumerate(lmaxes):
        C = torch.diag(torch.tensor([lm, 0.3 * lm, 0.1], dtype=f64))
        s = rs(C)
        expected = lm if expected is None else 0.9 * expected + 0.1 * lm
        assert float(rs.value) == pytest.approx(expected, rel=1e-10), i
        assert float(s) == pytest.approx(1.1 * expected, rel=1e-10)
    # batched call: EMA of the max over the batch
    batch = torch.stack([torch.diag(torch.tensor([5.0, 1.0], dtype=f64)), torch.eye(2, dtype=f64)])
    rs(batch)
    expected = 0.9 * expected + 0.1 * 5.0
    assert float(rs.value) == pytest.approx(expected, rel=1e-10)
    # eval mode: no update
    rs.eval()
    rs(torch.diag(torch.tensor([100.0, 1.0], dtype=f64)))
    assert float(rs.value) == pytest.approx(expected, rel=1e-10)
    # state_dict round trip
    state = rs.state_dict()
    assert set(state) == {"value", "initialized"}
    fresh = RunningScale(momentum=0.9, safety=1.1)
    fresh.load_state_dict(state)
    assert float(fresh.value) == float(rs.value) and bool(fresh.initialized)
    C = spd_with_spectrum(geometric(8, 4.0), seed=16)
    fresh.eval()
    rs.eval()
    assert float(logdet_taylor(C, 5, scale=fresh)) == float(logdet_taylor(C, 5, scale=rs))
    # the value logdet_taylor uses is safety * EMA
    ref = taylor_series_from_eigenvalues(geometric(8, 4.0), 5, 1.1 * expected)
    assert float(logdet_taylor(C, 5, scale=rs)) == pytest.approx(float(ref), abs=1e-10)
    with pytest.raises(ValueError, match="uninitialised"):
        RunningScale().eval()(C)


def test_running_scale_lag_triggers_check():
    rs = RunningScale(momentum=0.99, safety=1.0)
    rs(torch.eye(4, dtype=f64))
    grown = 5.0 * torch.eye(4, dtype=f64)  # spectrum jumps 5x: EMA lags, ratio ~ 4.8
    with pytest.raises(ValueError, match="RunningScale"):
        logdet_taylor(grown, 4, scale=rs, on_violation="raise")


def _drifting_covariances(steps: int, d: int = 24, seed: int = 30, rate: float = 0.03):
    """A rotating, slowly growing covariance with a small top gap (lambda_2/lambda_1 = 0.95, the
    case where power iteration converges slowly), as a training run's covariance drifts; the
    eigenvectors turn by about ``rate`` radians per step."""
    lam = torch.tensor([1.0, 0.95] + [0.5 * 0.9**i for i in range(d - 2)], dtype=f64)
    gen = torch.Generator().manual_seed(seed)
    skew = torch.randn(d, d, generator=gen, dtype=f64)
    rotation = torch.linalg.matrix_exp(rate * (skew - skew.T) / math.sqrt(d))
    Q = random_orthogonal(d, seed)
    out = []
    for t in range(steps):
        out.append((Q * (lam * (1 + 0.01 * t))) @ Q.T)
        Q = rotation @ Q
    return out


def test_running_scale_warm_start_tracks_lambda_max_with_fewer_products():
    # truth: eigvalsh. Cold: 20 products from the fixed start every step. Warm: 3 products
    # from the previous step's vector. Both are Rayleigh quotients (never above lambda_max).
    # Measured (60 steps, from step 10): cold worst 5.0e-2 (when the fixed start is nearly
    # orthogonal to the top eigenvector), warm worst 3.2e-4; at 0.1 rad/step warm 4.1e-3.
    cold, warm = RunningScale(momentum=0.0), RunningScale(momentum=0.0, warm_iters=3)
    cold_err, warm_err = [], []
    for C in _drifting_covariances(60):
        lmax = float(torch.linalg.eigvalsh(C)[-1])
        cold(C)
        warm(C)
        for rs, errs in ((cold, cold_err), (warm, warm_err)):
            est = float(rs.last_estimate)
            assert est <= lmax * (1 + 1e-12)
            errs.append(1 - est / lmax)
    assert warm_err[0] == cold_err[0]  # the first call is the same cold start
    assert max(cold_err[10:]) > 1e-2  # the case is hard for 20 cold products ...
    assert max(warm_err[10:]) < 1e-3  # ... and the warm start's worst step is 30x better
    with pytest.raises(ValueError, match="warm_iters"):
        RunningScale(warm_iters=0)


def test_running_scale_warm_start_resumes_exactly_and_cold_state_is_unchanged():
    covs = _drifting_covariances(8)
    rs = RunningScale(momentum=0.9, warm_iters=2)
    for C in covs[:4]:
        rs(C)
    state = rs.state_dict()
    assert set(state) == {"value", "initialized", "vector"} and state["vector"].shape == (24, 1)
    fresh = RunningScale(momentum=0.9, warm_iters=2)
    fresh.load_state_dict(state)  # the empty vector buffer adopts the stored shape
    for C in covs[4:]:
        assert float(fresh(C)) == float(rs(C))
    with pytest.raises(ValueError, match="stored vector has shape"):
        rs(torch.eye(5, dtype=f64))
    # without warm_iters the state is what it always was; either state loads into either kind
    cold_state = RunningScale().state_dict()
    assert set(cold_state) == {"value", "initialized"}
    RunningScale().load_state_dict(state)  # the stored vector is not used
    from_cold = RunningScale(momentum=0.9, warm_iters=2)
    from_cold.load_state_dict({"value": state["value"], "initialized": state["initialized"]})
    cold_twin = RunningScale(momentum=0.9)
    cold_twin.load_state_dict(
        cold_state | {"value": state["value"], "initialized": state["initialized"]}
    )
    # no vector: the first call after loading starts cold (20 products), as the cold twin does
    assert float(from_cold(covs[4])) == float(cold_twin(covs[4]))
    assert from_cold.vector.shape == (24, 1)


def test_running_scale_first_call_branch_matches_an_explicit_ema():
    # the update is a torch.where on the `initialized` buffer (no host read): same numbers as
    # the two-branch formula, including a batch whose max decides
    rs = RunningScale(momentum=0.75, safety=1.0, power_iters=80)
    values = [3.0, 1.0, 7.0]
    ema = None
    for v in values:
        rs(torch.diag(torch.tensor([v, 0.5 * v, 0.1], dtype=f64)))
        ema = v if ema is None else 0.75 * ema + 0.25 * v
        assert float(rs.value) == pytest.approx(ema, rel=1e-12)


def _checked_and_unchecked(C, scale_factory, on_violation):
    checked = logdet_taylor(C, 6, scale=scale_factory(), on_violation=on_violation)
    with OpCounter() as ops:
        unchecked = logdet_taylor(
            C, 6, scale=scale_factory(), on_violation=on_violation, check_finite=False
        )
    return checked, unchecked, ops


@pytest.mark.parametrize(
    "scale_factory",
    [lambda: "power", lambda: "trace", lambda: 0.4, lambda: RunningScale(momentum=0.5)],
    ids=["power", "trace", "number", "running"],
)
@pytest.mark.parametrize("on_violation", ["clamp", "ignore"])
def test_taylor_without_checks_never_syncs_and_gives_the_same_numbers(scale_factory, on_violation):
    # a batch where the convergence check fails for some matrices (lambda_max/trace >> 2) and
    # not for others: "clamp" must replace s exactly where the checked path does
    C = torch.stack(
        [spd_with_spectrum(geometric(10, 50.0), seed=31), spd_with_spectrum([1.0] * 10, seed=32)]
    )
    checked, unchecked, ops = _checked_and_unchecked(C, scale_factory, on_violation)
    assert not ops.syncs, ops.syncs
    assert ops.count(HOST_FACTORY_OPS) == 0 and ops.counts["randn"] == 0
    torch.testing.assert_close(unchecked, checked, rtol=0, atol=0)
    # control: the checking path reads device values, and the recorder sees it
    with OpCounter() as ops:
        logdet_taylor(C, 6, scale=scale_factory(), on_violation=on_violation)
    assert ops.syncs


def test_taylor_without_checks_lets_nan_through_and_with_checks_names_it():
    C = spd_with_spectrum(geometric(6, 3.0), seed=33)
    C[0, 1] = C[1, 0] = float("nan")
    assert torch.isnan(logdet_taylor(C, 4, scale="power", on_violation="clamp", check_finite=False))
    with pytest.raises(ValueError, match="non-finite"):
        logdet_taylor(C, 4, scale="power", on_violation="clamp")


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_taylor_bad_input():
    C = spd_with_spectrum(geometric(5, 2.0), seed=17)
    with pytest.raises(ValueError, match="order"):
        logdet_taylor(C, 0)
    with pytest.raises(ValueError, match="order"):
        logdet_taylor(C, 2.5)
    with pytest.raises(ValueError, match="unknown scale rule"):
        logdet_taylor(C, 4, scale="largest")
    with pytest.raises(ValueError, match="> 0"):
        logdet_taylor(C, 4, scale=-1.0)
    with pytest.raises(ValueError, match="broadcast"):
        logdet_taylor(torch.stack([C, C]), 4, scale=torch.ones(3))
    with pytest.raises(ValueError, match="on_violation"):
        logdet_taylor(C, 4, on_violation="clip")
    with pytest.raises(ValueError, match="square"):
        logdet_taylor(torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="non-finite"):
        logdet_taylor(torch.full((3, 3), float("inf")), 4)
    with pytest.raises(ValueError, match="> 0"):
        taylor_truncation_error(torch.tensor([1.0, -0.5]), 3, 1.0)
    with pytest.raises(ValueError, match="lambda_min"):
        taylor_error_bound(3, 1.0, 2.0, 1.0, 4)


# ------------------------------------------------------------------------------------------
# the order-study driver's spectral shortcuts against autograd on the matrices
# ------------------------------------------------------------------------------------------


def test_order_study_spectral_values_and_gradient_cosines_match_autograd():
    from analysis.taylor_order import (
        geometric_spectrum,
        scale_for,
        study_matrices,
        two_view_covariance,
    )

    gen = torch.Generator().manual_seed(5)
    d = 6
    sigma, _, J, mi = two_view_covariance(geometric_spectrum(d, 20.0), gen)
    orders = (1, 3, 6)
    rows = study_matrices([sigma, sigma], J, orders, rules=("power", "midrange"), mi_reference=mi)
    for row in rows:
        rule, K = row["scale"], row["order"]
        s11, sj = scale_for(rule, sigma), scale_for(rule, J)
        Jr = J.clone().requires_grad_(True)
        if row["quantity"] == "logdet":
            val = logdet_taylor(Jr[:d, :d], K, scale=s11, on_violation="ignore")
            exact = logdet_exact(Jr[:d, :d])
        else:
            val = 0.5 * (
                logdet_taylor(Jr[:d, :d], K, scale=s11, on_violation="ignore")
                + logdet_taylor(Jr[d:, d:], K, scale=s11, on_violation="ignore")
                - logdet_taylor(Jr, K, scale=sj, on_violation="ignore")
            )
            exact = 0.5 * (logdet_exact(Jr[:d, :d]) + logdet_exact(Jr[d:, d:]) - logdet_exact(Jr))
            assert abs(float(exact.detach()) - mi) < 1e-10  # closed-form MI of the construction
        (g,) = torch.autograd.grad(val, Jr)
        (ge,) = torch.autograd.grad(exact, Jr)
        cos = float((g * ge).sum() / (g.norm() * ge.norm()))
        assert abs(float(val.detach()) - row["taylor"]) < 1e-10
        assert abs(float(exact.detach()) - row["exact"]) < 1e-10
        assert abs(cos - row["grad_cos"]) < 1e-9, (row["quantity"], rule, K)


def test_order_study_embedding_space_cosines_match_autograd():
    from analysis.taylor_order import (
        geometric_spectrum,
        scale_for,
        study_matrices,
        two_view_covariance,
    )

    gen = torch.Generator().manual_seed(6)
    d, n = 5, 40
    sigma, _, J, _ = two_view_covariance(geometric_spectrum(d, 30.0), gen)
    rows = study_matrices([sigma, sigma], J, (2, 7), rules=("max_eig",))
    # embeddings with uncentred covariance exactly J: Z = sqrt(n) U L' with orthonormal U
    U, _ = torch.linalg.qr(torch.randn(n, 2 * d, generator=gen, dtype=f64))
    L = torch.linalg.cholesky(J)
    Z0 = n**0.5 * U @ L.T
    s11, sj = scale_for("max_eig", sigma), scale_for("max_eig", J)

    def parts(Z, K):
        C = Z.T @ Z / n
        if K is None:
            f = logdet_exact
        else:

            def f(A, s_=None):
                return logdet_taylor(A, K, scale=s_, on_violation="ignore")

        if K is None:
            return f(C[:d, :d]), 0.5 * (f(C[:d, :d]) + f(C[d:, d:]) - f(C))
        ld = f(C[:d, :d], s11)
        return ld, 0.5 * (ld + f(C[d:, d:], s11) - f(C, sj))

    for row in rows:
        idx = 0 if row["quantity"] == "logdet" else 1
        grads = []
        for K in (row["order"], None):
            Z = Z0.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(parts(Z, K)[idx], Z)
            grads.append(g)
        cos = float((grads[0] * grads[1]).sum() / (grads[0].norm() * grads[1].norm()))
        assert abs(cos - row["grad_cos_embedding"]) < 1e-9, (row["quantity"], row["order"])
