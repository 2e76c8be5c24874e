"""EMILoss: exact value vs gaussian_mi and a dense numpy log-det, forms, Taylor limit, gradients."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from mitools.losses import EMILoss, build_loss, joint_covariance, min_batch_size


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matrices: thread start-up dominates on a shared machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _views(n=400, d=3, noise=0.6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=dtype)
    z = torch.randn(n, d, generator=g, dtype=dtype) @ mix
    z1 = z + noise * torch.randn(n, d, generator=g, dtype=dtype)
    z2 = z @ torch.randn(d, d, generator=g, dtype=dtype) + noise * torch.randn(
        n, d, generator=g, dtype=dtype
    )
    return z1, z2


def _numpy_mi(a: np.ndarray, b: np.ndarray, ridge: float = 0.0) -> float:
    """Independent dense reference: 1/2 [logdet C11 + logdet C22 - logdet C], np.cov (1/(N-1))."""
    d = a.shape[1]
    C = np.cov(np.hstack([a, b]), rowvar=False) + ridge * np.eye(2 * d)
    ld = lambda M: np.linalg.slogdet(M)[1]  # noqa: E731
    return 0.5 * (ld(C[:d, :d]) + ld(C[d:, d:]) - ld(C))


def test_exact_loss_equals_minus_gaussian_mi():
    from mitools.mi.estimators import gaussian_mi

    z1, z2 = _views()
    loss = EMILoss()(z1, z2)
    ref = gaussian_mi(z1.numpy(), z2.numpy())
    assert abs(float(loss) + ref) < 1e-10 * max(1.0, abs(ref))
    assert abs(float(loss) + _numpy_mi(z1.numpy(), z2.numpy())) < 1e-10
    assert ref > 0.1  # the test data are really dependent
    # same ridge convention (C + ridge I with C normalised by N - 1)
    ridged = EMILoss(ridge=0.5)(z1, z2)
    assert float(ridged) == pytest.approx(
        -gaussian_mi(z1.numpy(), z2.numpy(), ridge=0.5), abs=1e-10
    )


def test_exact_loss_scale_invariant_without_ridge_and_not_with_ridge():
    z1, z2 = _views()
    base = float(EMILoss()(z1, z2))
    assert float(EMILoss()(3.0 * z1, 0.2 * z2)) == pytest.approx(base, abs=1e-10)
    r1 = float(EMILoss(ridge=0.5)(z1, z2))
    r2 = float(EMILoss(ridge=0.5)(3.0 * z1, 3.0 * z2))
    assert abs(r1 - r2) > 1e-3
    assert r1 == pytest.approx(-_numpy_mi(z1.numpy(), z2.numpy(), ridge=0.5), abs=1e-10)


def test_symmetric_equals_joint_for_exchangeable_views_and_differs_otherwise():
    a, b = _views(n=300, d=4, seed=1)
    # Swapped copies make the sample covariance exactly exchangeable: C11 = C22, C12 = C12'.
    z1, z2 = torch.cat([a, b]), torch.cat([b, a])
    C = joint_covariance(z1, z2)
    assert torch.allclose(C[:4, :4], C[4:, 4:], atol=1e-12)
    assert torch.allclose(C[:4, 4:], C[:4, 4:].T, atol=1e-12)
    for ridge in (0.0, 0.1):
        joint = EMILoss(form="joint", ridge=ridge)(z1, z2)
        sym = EMILoss(form="symmetric", ridge=ridge)(z1, z2)
        assert float(joint) == pytest.approx(float(sym), abs=1e-10)
    assert abs(float(EMILoss(form="joint")(a, b)) - float(EMILoss(form="symmetric")(a, b))) > 1e-3


@pytest.mark.parametrize("form", ["joint", "symmetric"])
def test_taylor_approaches_exact_as_order_grows(form):
    z1, z2 = _views(n=600, d=3, noise=1.0, seed=2)
    exact = float(EMILoss(form=form)(z1, z2))
    errs = [
        abs(float(EMILoss(form=form, logdet="taylor", order=k, scale="max_eig")(z1, z2)) - exact)
        for k in (1, 2, 4, 8, 16, 64, 256)
    ]
    # s = lambda_max: every log-det's truncated series decreases monotonically to the exact value;
    # the MI combines three such series, so check the overall trend and the limit.
    assert errs[-1] < 1e-6 * max(1.0, abs(exact))
    assert errs[-1] < errs[3] < errs[0]


@pytest.mark.parametrize("form", ["joint", "symmetric"])
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"ridge": 0.05},
        {"center": False},
        {"logdet": "taylor", "order": 4, "scale": 6.0},
        {"logdet": "taylor", "order": 3, "scale": 5.0, "ridge": 0.1},
        {"covariance": "ema", "ema_momentum": 0.5},
    ],
)
def test_gradcheck(form, config):
    z1, z2 = _views(n=12, d=2, seed=3)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = EMILoss(form=form, **config)
    if config.get("covariance") == "ema":
        loss(z1.detach() * 1.3, z2.detach())  # populate the buffer
        loss.eval()  # no buffer update during gradcheck's repeated calls
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (z1, z2), eps=1e-6, atol=1e-7)


def test_ema_covariance_value_buffer_and_gradient_share():
    z1, z2 = _views(n=50, d=2, seed=4)
    m = 0.7
    loss = EMILoss(covariance="ema", ema_momentum=m)
    loss(z1, z2)
    prev = loss.ema_cov.clone()
    assert not prev.requires_grad
    c_batch0 = joint_covariance(z1, z2)
    init = torch.diagonal(c_batch0).mean() * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(prev, m * init + (1 - m) * c_batch0, atol=1e-12)

    a, b = _views(n=50, d=2, seed=5)
    a.requires_grad_(True)
    value = loss(a, b)
    C = m * prev.numpy() + (1 - m) * np.cov(
        np.hstack([a.detach().numpy(), b.numpy()]), rowvar=False
    )
    ld = lambda M: np.linalg.slogdet(M)[1]  # noqa: E731
    ref = -0.5 * (ld(C[:2, :2]) + ld(C[2:, 2:]) - ld(C))
    assert value.item() == pytest.approx(ref, abs=1e-10)
    # gradient only through (1 - m) C_batch: equals the gradient of -MI(m*P + (1-m)*C(a, b)), P fixed
    (g,) = torch.autograd.grad(value, a)
    a2 = a.detach().clone().requires_grad_(True)
    Cb = m * prev + (1 - m) * joint_covariance(a2, b)
    manual = -0.5 * (torch.logdet(Cb[:2, :2]) + torch.logdet(Cb[2:, 2:]) - torch.logdet(Cb))
    (g2,) = torch.autograd.grad(manual, a2)
    assert torch.allclose(g, g2, atol=1e-12)


def test_small_batch_message_and_remedies():
    d = 8
    z1, z2 = _views(n=16, d=d, seed=6)
    assert min_batch_size(d) == 17 and min_batch_size(d, form="symmetric") == 9
    with pytest.raises(ValueError, match=r"N >= 17.*ridge"):
        EMILoss()(z1, z2)
    assert torch.isfinite(EMILoss(ridge=1e-3)(z1, z2))
    assert torch.isfinite(EMILoss(covariance="ema")(z1, z2))
    assert torch.isfinite(EMILoss(form="symmetric")(z1, z2))  # 16 >= d + 1
    z1, z2 = _views(n=17, d=d, seed=6)
    assert torch.isfinite(EMILoss()(z1, z2))


def test_bad_inputs():
    z1, z2 = _views(n=40, d=3)
    with pytest.raises(ValueError, match="same shape"):
        EMILoss()(z1, z2[:, :2])
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        EMILoss()(z1[:, 0], z2[:, 0])
    bad = z1.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        EMILoss()(bad, z2)
    with pytest.raises(ValueError, match="form"):
        EMILoss(form="diagonal")
    with pytest.raises(ValueError, match="ridge"):
        EMILoss(ridge=-1.0)


def test_last_terms_and_autocast_and_float32():
    z1, z2 = _views(n=200, d=4, seed=7, dtype=torch.float32)
    loss = EMILoss()
    ref = loss(z1.double(), z2.double())
    assert float(loss.last_terms["mi"]) == pytest.approx(-float(ref), abs=1e-12)
    assert set(loss.last_terms) >= {"loss", "mi", "logdet_c11", "logdet_c22", "logdet_joint"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = loss(z1, z2)
    assert under.dtype == torch.float64
    assert float(under) == pytest.approx(float(ref), abs=1e-9)
    f32 = EMILoss(compute_dtype=torch.float32)(z1, z2)
    assert float(f32) == pytest.approx(float(ref), abs=1e-4)
    sym = EMILoss(form="symmetric", logdet="taylor", scale="running", order=8)
    sym(z1, z2)
    assert set(sym.last_terms) >= {"logdet_c", "logdet_c_plus_d", "logdet_c_minus_d"}
    assert isinstance(build_loss("emi", form="symmetric"), EMILoss)


def test_fresh_ema_loss_loads_a_trained_state():
    # Regression: the EMA covariance is an empty placeholder until the first step; a fresh loss
    # must adopt the stored shape (resume) rather than fail on a size mismatch.
    from mitools.losses import EMILoss

    torch.manual_seed(0)
    trained = EMILoss(covariance="ema", ema_momentum=0.9).train()
    trained(torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 4, dtype=torch.float64))
    fresh = EMILoss(covariance="ema", ema_momentum=0.9)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.ema_cov, trained.ema_cov)
    z1, z2 = torch.randn(2, 64, 4, dtype=torch.float64)
    torch.testing.assert_close(fresh.eval()(z1, z2), trained.eval()(z1, z2))


# The trainer's GPU recipe (trainers/configs/methods/emi.yaml): Taylor series with running
# scales, EMA covariance, clamp policy; the trainer builds losses with check_finite=False.
_TRAINER_RECIPE = dict(
    form="joint", logdet="taylor", order=4, scale="running", covariance="batch",
    ridge=1e-4, on_violation="clamp",
)  # fmt: skip


def _recipe_steps(steps: int, **options):
    from mitools.op_trace import OpCounter

    loss_fn = EMILoss(**{**_TRAINER_RECIPE, **options})
    ops, losses = OpCounter(), []
    for step in range(steps):
        z1, z2 = _views(n=64, d=6, noise=0.3 + 0.5 * step, seed=step)
        z1.requires_grad_(True)
        with ops if step == steps - 1 else contextlib.nullcontext():
            loss = loss_fn(z1, z2)
            loss.backward()
        losses.append((float(loss.detach()), z1.grad.clone()))
    return losses, ops


@pytest.mark.parametrize("covariance", ["batch", "ema"])
@pytest.mark.parametrize("warm_iters", [None, 3])
def test_taylor_recipe_runs_without_host_syncs_and_as_the_checked_loss(warm_iters, covariance):
    # every host read of a device value stalls the CUDA launch queue; the unchecked recipe has
    # none (the spectrum grows step to step, so the clamp branch is exercised too)
    options = dict(running_warm_iters=warm_iters, covariance=covariance)
    unchecked, ops = _recipe_steps(4, check_finite=False, **options)
    assert not ops.syncs, ops.syncs
    assert ops.counts["randn"] == 0  # no start vector drawn on the host after the first call
    checked, control = _recipe_steps(4, check_finite=True, **options)
    assert control.syncs  # the recorder sees the checks where they run
    for (a, ga), (b, gb) in zip(unchecked, checked, strict=True):
        assert a == b
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_warm_started_running_scales_cut_the_operator_count():
    # the power iterations of the three running scales were most of the recipe's operators;
    # measured at d = 6: 20 cold products -> 3 warm products per term
    _, cold = _recipe_steps(3, check_finite=False)
    _, warm = _recipe_steps(3, check_finite=False, running_warm_iters=3)
    saved = cold.launches - warm.launches
    # 4 launches per product (mm, norm, clamp, div)
    assert saved == 3 * (20 - 3) * 4, (cold.launches, warm.launches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_taylor_recipe_runs_under_cuda_sync_debug_mode():
    loss_fn = EMILoss(**_TRAINER_RECIPE, check_finite=False, running_warm_iters=3).cuda()
    for step in range(3):
        z1, z2 = (z.cuda().float() for z in _views(n=256, d=16, seed=step))
        z1.requires_grad_(True)
        if step == 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss_fn(z1, z2).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_taylor_is_accurate_in_the_symmetric_form_and_not_in_the_joint_one():
    # The README's claim, on its stated toy data: isotropic views with correlation 0.5 per
    # dimension (d = 8, N = 4096). The symmetric form's C, C + D and C - D are each close to a
    # multiple of the identity (eigenvalues 1, 1.5, 0.5 up to sampling noise), so the rescaled
    # series converges at once; the joint covariance mixes 1.5 and 0.5 (condition number 3) and
    # K = 4 is far from converged there.
    g = torch.Generator().manual_seed(0)
    d, n, rho = 8, 4096, 0.5
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = rho * z1 + (1 - rho**2) ** 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    mi = {}
    for form in ("symmetric", "joint"):
        exact = -float(EMILoss(form=form)(z1, z2))
        taylor = -float(EMILoss(form=form, logdet="taylor", order=4, scale="max_eig")(z1, z2))
        mi[form] = (exact, taylor)
    assert mi["symmetric"][1] == pytest.approx(mi["symmetric"][0], rel=1e-4)
    assert mi["joint"][1] < 0.8 * mi["joint"][0]
    # both exact forms estimate the true -d/2 log(1 - rho^2) = 1.1507 nats
    for exact, _ in mi.values():
        assert exact == pytest.approx(-d / 2 * math.log(1 - rho**2), rel=0.02)


def test_symmetric_form_on_non_exchangeable_views_matches_the_documented_formula():
    # The documented symmetric form, computed independently in numpy/float64 from its two stated
    # expressions: (a) I = log det C - 1/2 log det(Cov(z1 + z2)/2) - 1/2 log det(Cov(z1 - z2)/2)
    # with C = (Cov(z1) + Cov(z2))/2; (b) the Gaussian MI of the view-swapped (exchangeable)
    # joint covariance [[C, D], [D, C]], D = (C12 + C21)/2. The views differ in scale and
    # covariance (C11 != C22, C12 != C12'), so C11, C22 and C are three different matrices and
    # the value tells them apart (replacing C by C11 moves it by > 1 nat).
    g = torch.Generator().manual_seed(11)
    n, d = 500, 3
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.4, -0.3], [0.0, 0.7, 0.5], [0.2, 0.0, 1.3]], dtype=torch.float64)
    z1 = z @ mix + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = (z + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)) * torch.tensor(
        [4.0, 2.0, 0.3], dtype=torch.float64
    )
    a, b = z1.numpy(), z2.numpy()
    cov = lambda x: np.cov(x, rowvar=False)  # noqa: E731
    ld = lambda M: np.linalg.slogdet(M)[1]  # noqa: E731
    c11, c22 = cov(a), cov(b)
    c = 0.5 * (c11 + c22)
    c12 = np.cov(np.hstack([a, b]), rowvar=False)[:d, d:]
    dd = 0.5 * (c12 + c12.T)
    # the views really are not exchangeable
    assert np.linalg.norm(c11 - c22) > 1.0 and np.linalg.norm(c12 - c12.T) > 0.1
    eye = np.eye(d)
    for ridge in (0.0, 0.1):
        ref = (
            ld(c + ridge * eye)
            - 0.5 * ld(cov(a + b) / 2 + ridge * eye)
            - 0.5 * ld(cov(a - b) / 2 + ridge * eye)
        )
        swapped = np.block([[c, dd], [dd, c]]) + ridge * np.eye(2 * d)
        ref_b = 0.5 * (2 * ld(c + ridge * eye) - ld(swapped))
        assert ref == pytest.approx(ref_b, abs=1e-12)
        loss = EMILoss(form="symmetric", logdet="exact", ridge=ridge)
        value = loss(z1, z2)
        assert float(value) == pytest.approx(-ref, abs=1e-10)
        assert float(loss.last_terms["logdet_c"]) == pytest.approx(ld(c + ridge * eye), abs=1e-10)
    # sensitivity: using either block for C would move the value by far more than the tolerance,
    # and the symmetric form differs from the joint one on these views
    assert min(abs(ld(c11) - ld(c)), abs(ld(c22) - ld(c))) > 0.5
    assert (
        abs(float(EMILoss(form="joint")(z1, z2)) - float(EMILoss(form="symmetric")(z1, z2))) > 0.1
    )
