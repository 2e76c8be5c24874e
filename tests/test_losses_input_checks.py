"""Bad input to the losses and log-dets: a one-line ValueError naming the problem, never a deep
torch error or a silent NaN (mixed dtypes, NaN/inf hyper-parameters, half-precision linear
algebra, mio_gradient's inputs and zero rows)."""

from __future__ import annotations

import pytest
import torch

from mitools.logdet import logdet_exact, logdet_taylor
from mitools.losses import LOSSES, MIOLoss, build_loss, mio_gradient


def _pair(n=8, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def _cov(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, d, generator=g, dtype=torch.float64)
    return x.T @ x / 50


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mixed_dtypes_are_computed_in_the_wider_dtype_by_every_loss(name):
    # e.g. a bf16 online output against a float32 target under autocast: no "expected scalar
    # type" error from a matmul; the value is the loss of both views in the promoted dtype
    z1, z2 = _pair(n=16, dtype=torch.float64)  # EMI's joint form needs N >= 2d + 1
    z2_narrow = z2.float()
    torch.manual_seed(0)  # losses with random init (e.g. a predictor) start alike
    mixed = build_loss(name)(z1, z2_narrow)
    torch.manual_seed(0)
    wide = build_loss(name)(z1, z2_narrow.double())
    assert mixed.dtype == wide.dtype
    torch.testing.assert_close(mixed, wide, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("mio", {"lam": float("nan")}, "lam"),
        ("mio", {"lam": float("inf")}, "lam"),
        ("mio", {"tau_p": float("nan")}, "temperature tau_p"),
        ("mio", {"tau_n": float("inf")}, "temperature tau_n"),
        ("simclr", {"temperature": float("nan")}, "temperature"),
        ("simclr", {"temperature": float("inf")}, "temperature"),
        ("simclr", {"temperature": -0.5}, "temperature"),
        ("barlow_twins", {"lambda_param": float("nan")}, "lambda_param"),
        ("vicreg", {"mu_param": float("nan")}, "mu_param"),
        ("vicreg", {"eps": float("inf")}, "eps"),
        ("corinfomax", {"sim_loss_weight": float("nan")}, "sim_loss_weight"),
        ("corinfomax", {"R_eps_weight": float("inf")}, "R_eps_weight"),
        ("mec", {"eps": float("nan")}, "eps"),
        ("mec", {"lamda_inv": float("nan")}, "lamda_inv"),
    ],
)
def test_non_finite_hyper_parameters_rejected(name, config, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **config)


def test_mio_loss_nan_lam_rejected_by_constructor():
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0, got nan"):
        MIOLoss(lam=float("nan"))


@pytest.mark.parametrize("scale", ["max_eig", "midrange"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_logdet_taylor_eigen_rules_reject_half(scale, dtype):
    C = _cov().to(dtype)
    with pytest.raises(ValueError, match=rf"does not support dtype {dtype}; pass C as float32"):
        logdet_taylor(C, 4, scale=scale)
    # computing in float64 already worked and keeps working, returned in C's dtype
    ld = logdet_taylor(C, 4, scale=scale, float64=True)
    assert ld.dtype == dtype and torch.isfinite(ld)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_logdet_exact_rejects_half_without_float64(dtype):
    C = _cov().to(dtype)
    with pytest.raises(ValueError, match=rf"does not support dtype {dtype}; pass C as float32"):
        logdet_exact(C, float64=False)
    ld = logdet_exact(C)  # float64=True (default) upcasts: unchanged
    assert ld.dtype == dtype and torch.isfinite(ld)


def test_logdet_taylor_half_with_series_only_scale_still_works():
    ld = logdet_taylor(_cov().half(), 4, scale="trace", on_violation="ignore")
    assert ld.dtype == torch.float16 and torch.isfinite(ld)


def test_mio_gradient_checks_its_inputs():
    z1, z2 = _pair()
    with pytest.raises(ValueError, match="same shape"):
        mio_gradient(z1, z2[:-1])
    mixed = mio_gradient(z1, z2.float())  # computed in the wider dtype, as the loss is
    for got, want in zip(mixed, mio_gradient(z1, z2.float().double()), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("lam", [0.0, 0.7])
@pytest.mark.parametrize("mse_on", ["raw", "normalized"])
def test_mio_gradient_matches_autograd_with_a_zero_row(lam, mse_on):
    z1, z2 = _pair()
    z1[2] = 0.0
    cfg = dict(lam=lam, mse_on=mse_on)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ga, gb = torch.autograd.grad(MIOLoss(**cfg)(a, b), (a, b))
    assert torch.isfinite(ga).all()
    g1, g2 = mio_gradient(z1, z2, **cfg)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    # the zero row's gradient is O(1/eps) = O(1e12): compare relative to that scale
    torch.testing.assert_close(g1, ga, rtol=1e-10, atol=1e-10 * float(ga.abs().max()))
    torch.testing.assert_close(g2, gb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_compute_in_full_precision_under_autocast(name):
    """Under bf16 autocast (the trainer's CUDA default; here CPU autocast) every loss upcasts
    half-precision embeddings and computes with autocast off: its value equals the float32
    computation on the same (bf16-valued) embeddings exactly, and the input gradients equal the
    float32 ones rounded to bf16. Before, the matmuls ran in bf16: VICReg's input gradient was 5 %
    (relative norm) off, Barlow Twins' 3 %, SimCLR's 1.4 %."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(256, 32, generator=g)
    x1 = (base + 0.3 * torch.randn(256, 32, generator=g)).bfloat16()
    x2 = (base + 0.3 * torch.randn(256, 32, generator=g)).bfloat16()
    loss = build_loss(name).eval()

    def run(a, b, autocast):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(a, b)
        value.backward()
        return value.detach(), a.grad, b.grad

    want, want1, want2 = run(x1.float(), x2.float(), autocast=False)
    got, got1, got2 = run(x1, x2, autocast=True)
    assert got.dtype == want.dtype and torch.equal(got, want), (float(got), float(want))
    assert got1.dtype == torch.bfloat16
    assert torch.equal(got1, want1.bfloat16()) and torch.equal(got2, want2.bfloat16())
    # float32 embeddings inside an autocast region: the same float32 computation
    assert torch.equal(run(x1.float(), x2.float(), autocast=True)[0], want)
