"""Baselines vs independent direct formulas; registry; toy training (all losses) and collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mitools.losses import (
    LOSSES,
    BarlowTwinsLoss,
    BYOLLoss,
    CorInfoMaxLoss,
    MECLoss,
    SimCLRLoss,
    VICRegLoss,
    build_loss,
    mec_lamda_inv,
)


def _data(n=10, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (
        base + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64),
        0.5 * base + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0,
    )


def test_simclr_matches_direct_nt_xent():
    z1, z2 = _data()
    tau = 0.3
    u = F.normalize(torch.cat([z1, z2]), dim=1).numpy()
    n2 = len(u)
    total = 0.0
    for i in range(n2):
        logits = np.array([u[i] @ u[j] / tau for j in range(n2) if j != i])
        others = [j for j in range(n2) if j != i]
        pos = others.index((i + n2 // 2) % n2)
        total += -(logits[pos] - np.log(np.exp(logits).sum()))
    loss = SimCLRLoss(temperature=tau)
    assert float(loss(z1, z2)) == pytest.approx(total / n2, abs=1e-10)
    assert float(loss.last_terms["infonce_bound"]) == pytest.approx(
        math.log(n2 - 1) - total / n2, abs=1e-10
    )


def test_barlow_twins_matches_direct_formula():
    z1, z2 = _data(n=12, d=5)
    a, b = z1.numpy(), z2.numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)  # BatchNorm (training): biased var, eps 1e-5
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = a.T @ b / len(a)
    lam = 0.01
    ref = ((np.diag(c) - 1) ** 2).sum() + lam * (c**2).sum() - lam * (np.diag(c) ** 2).sum()
    loss = BarlowTwinsLoss(lambda_param=lam)
    assert float(loss(z1, z2)) == pytest.approx(ref, abs=1e-10)
    assert float(loss.last_terms["on_diag"] + lam * loss.last_terms["off_diag"]) == pytest.approx(
        ref, abs=1e-10
    )
    # solo-learn's scale_loss multiplies the loss (and its gradient), not the reported terms
    scaled = BarlowTwinsLoss(lambda_param=lam, scale_loss=0.1)
    z1g = z1.clone().requires_grad_(True)
    value = scaled(z1g, z2)
    assert float(value) == pytest.approx(0.1 * ref, abs=1e-11)
    assert float(scaled.last_terms["on_diag"] + lam * scaled.last_terms["off_diag"]) == (
        pytest.approx(ref, abs=1e-10)
    )
    (grad,) = torch.autograd.grad(value, z1g)
    z1u = z1.clone().requires_grad_(True)
    (grad_unscaled,) = torch.autograd.grad(loss(z1u, z2), z1u)
    torch.testing.assert_close(grad, 0.1 * grad_unscaled, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="scale_loss"):
        BarlowTwinsLoss(scale_loss=0.0)


def test_vicreg_matches_direct_formula():
    z1, z2 = _data(n=12, d=5)
    a, b = z1.numpy(), z2.numpy()
    inv = np.mean((a - b) ** 2)

    def var(x):
        return np.mean(np.maximum(0.0, 1.0 - np.sqrt(x.var(0, ddof=1) + 1e-4)))

    def cov(x):
        C = np.cov(x, rowvar=False)
        return ((C**2).sum() - (np.diag(C) ** 2).sum()) / x.shape[1]

    ref = 25 * inv + 25 * 0.5 * (var(a) + var(b)) + 1.0 * (cov(a) + cov(b))
    loss = VICRegLoss()
    assert float(loss(z1, z2)) == pytest.approx(ref, abs=1e-9)
    assert float(loss.last_terms["invariance"]) == pytest.approx(inv, abs=1e-12)


def test_byol_predictor_hook_and_stop_gradient():
    z1, z2 = _data(n=8, d=4)
    torch.manual_seed(0)
    pred = torch.nn.Linear(4, 4).double()
    loss = BYOLLoss(predictor=pred)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    value = loss(a, b)
    ref = 0.5 * (
        -F.cosine_similarity(pred(z1), z2).mean() - F.cosine_similarity(pred(z2), z1).mean()
    )
    assert value.item() == pytest.approx(ref.item(), abs=1e-12)
    ga, gb = torch.autograd.grad(value, (a, b))
    # with stop-gradient, a only receives gradient through pred(a) vs the fixed target b
    a2 = z1.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(-0.5 * F.cosine_similarity(pred(a2), z2).mean(), a2)
    assert torch.allclose(ga, g_ref, atol=1e-12)
    assert not BYOLLoss().stop_gradient and BYOLLoss(predictor=pred).stop_gradient


def _corinfomax_numpy(batches, la_R, la_mu, eps, sim_w, cov_w):
    d = batches[0][0].shape[1]
    state = {k: (np.eye(d), np.zeros(d)) for k in (1, 2)}
    out = []
    for z1, z2 in batches:
        lds = []
        for k, z in ((1, z1), (2, z2)):
            R, mu = state[k]
            mu = la_mu * mu + (1 - la_mu) * z.mean(0)
            zc = z - mu
            R = la_R * R + (1 - la_R) * zc.T @ zc / len(z)
            state[k] = (R, mu)
            lds.append(np.linalg.slogdet(R + eps * np.eye(d))[1])
        out.append(sim_w * np.mean((z1 - z2) ** 2) - cov_w * (lds[0] + lds[1]) / d)
    return out


def test_corinfomax_matches_official_recurrence():
    batches = [tuple(t.numpy() for t in _data(n=16, d=5, seed=s)) for s in range(3)]
    ref = _corinfomax_numpy(batches, la_R=0.3, la_mu=0.2, eps=1e-6, sim_w=7.0, cov_w=1.5)
    loss = CorInfoMaxLoss(sim_loss_weight=7.0, cov_loss_weight=1.5, la_R=0.3, la_mu=0.2)
    got = [float(loss(torch.from_numpy(a), torch.from_numpy(b))) for a, b in batches]
    assert np.allclose(got, ref, atol=1e-10)
    assert not loss.R1.requires_grad


def test_mec_matches_official_series_and_exact_logdet_limit():
    z1, z2 = _data(n=10, d=6, seed=1)
    for n, d in ((10, 6), (6, 10)):  # both m<d and m>d trace paths
        a, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
        an, bn = F.normalize(a, dim=1), F.normalize(b, dim=1)
        lamda = d / (n * 64.0)
        c = (an @ bn.T * lamda).numpy()  # official: m x m matrix p @ z.T / lamda_inv
        series, power = np.zeros_like(c), c.copy()
        for k in range(1, 5):
            if k > 1:
                power = power @ c
            series += (1 if k % 2 else -1) * power / k
        trace = np.trace(series)
        ref = -(trace + trace) * 0.5 / n / lamda
        assert float(MECLoss()(a, b)) == pytest.approx(ref, rel=1e-10)
    # high order and small lambda: the series is log det(I + lambda Z1'Z2)
    loss = MECLoss(order=40, lamda_inv=5.0)
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    exact = torch.logdet(torch.eye(6, dtype=torch.float64) + (a.T @ b) / 5.0)
    assert float(loss(z1, z2)) == pytest.approx(float(-exact / 10 * 5.0), rel=1e-9)
    lam = 0.01
    assert mec_lamda_inv(0, 10, lam) == pytest.approx(800.0)
    assert mec_lamda_inv(9, 10, lam) == pytest.approx(100.0)
    assert mec_lamda_inv(50, 10, lam) == pytest.approx(100.0)


def test_build_loss_registry_errors():
    for name in LOSSES:
        assert isinstance(build_loss(name), torch.nn.Module)
    with pytest.raises(ValueError, match=r"did you mean 'vicreg'") as err:
        build_loss("vicrg")
    assert "simclr" in str(err.value)
    with pytest.raises(TypeError, match="temprature"):
        build_loss("simclr", temprature=0.1)


def test_bad_inputs_every_loss():
    z1, z2 = _data(n=20, d=4)
    bad = z1.clone()
    bad[0, 0] = float("nan")
    for name in LOSSES:
        with pytest.raises(ValueError, match="same shape"):
            build_loss(name)(z1, z2[:, :3])
        with pytest.raises(ValueError, match="non-finite"):
            build_loss(name)(bad, z2)


# ---- toy problem: two noisy views of a 4-d latent through a linear encoder ------------------

K, D = 4, 16
_A = torch.randn(D, K, generator=torch.Generator().manual_seed(0))
NOISE = 1.5
# Bayes-optimal linear R^2 of s from one view: 1 - tr((I + A'A/s^2)^-1)/K
R2_OPTIMAL = float(1 - torch.linalg.inv(torch.eye(K) + _A.T @ _A / NOISE**2).trace() / K)


def _sample(n, g):
    s = torch.randn(n, K, generator=g)
    views = [s @ _A.T + NOISE * torch.randn(n, D, generator=g) for _ in range(2)]
    return s, views[0], views[1]


def _r2_and_spectrum(enc):
    s, x, _ = _sample(3000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        z = enc(x)
    Z = torch.cat([z, torch.ones(len(z), 1)], 1)
    res = s - Z @ torch.linalg.lstsq(Z, s).solution
    r2 = float(1 - res.pow(2).sum() / (s - s.mean(0)).pow(2).sum())
    ev = torch.linalg.eigvalsh(torch.cov(F.normalize(z, dim=1).T))
    return r2, float(ev[0] / ev[-1])


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matmuls: thread start-up dominates on a shared machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train(loss, steps=150, n=128, lr=0.02):
    torch.manual_seed(1)
    enc = torch.nn.Linear(D, K)
    opt = torch.optim.Adam(list(enc.parameters()) + list(loss.parameters()), lr=lr)
    g = torch.Generator().manual_seed(2)
    fixed = _sample(n, torch.Generator().manual_seed(3))
    with torch.no_grad():
        start = float(loss(enc(fixed[1]), enc(fixed[2])))
    for _ in range(steps):
        _, x1, x2 = _sample(n, g)
        value = loss(enc(x1), enc(x2))
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        end = float(loss(enc(fixed[1]), enc(fixed[2])))
    return (start, end, *_r2_and_spectrum(enc))


TOY = {
    "emi": ({}, 0.8),
    "emi_symmetric": ({"form": "symmetric"}, 0.8),
    "emi_taylor8": ({"logdet": "taylor", "order": 8, "scale": "max_eig"}, 0.75),
    "mio": ({}, 0.8),
    "simclr": ({}, 0.8),
    "barlow_twins": ({}, 0.7),
    "vicreg": ({}, 0.6),
    "corinfomax": ({}, 0.8),
    "mec": ({"eps": 1.0}, 0.8),  # eps=64 (official, tuned for d=2048) is near-pure alignment at d=4
    "byol": (None, 0.6),
}


@pytest.mark.parametrize("key", sorted(TOY))
def test_toy_training_recovers_latent(key):
    cfg, threshold = TOY[key]
    name = key.split("_")[0] if key.startswith("emi") else key
    if name == "byol":
        torch.manual_seed(5)
        loss = BYOLLoss(predictor=torch.nn.Linear(K, K))
    else:
        loss = build_loss(name, **cfg)
    start, end, r2, ratio = _train(loss)
    assert end < start, (start, end)
    assert r2 > threshold, (r2, R2_OPTIMAL)
    assert r2 < R2_OPTIMAL + 0.02  # sanity: no estimate beats the Bayes-optimal linear R^2


def test_mi_losses_keep_spectrum_where_pure_alignment_collapses():
    _, _, r2_cos, ratio_cos = _train(BYOLLoss())  # negative cosine, no predictor, no stop-grad
    _, _, r2_mse, ratio_mse = _train(_MSE())
    for name in ("emi", "mio"):
        _, _, r2, ratio = _train(build_loss(name))
        assert ratio > 0.1, (name, ratio)  # smallest / largest eigenvalue of normalised embeddings
        assert r2 > 0.8
    # measured (1 thread, seeds fixed): cos ratio 6e-3, R^2 0.55; mse ratio 2e-5, R^2 0.45;
    # emi ratio 0.39, mio 0.56, R^2 0.84 (Bayes-optimal 0.846)
    assert ratio_cos < 0.03 and r2_cos < 0.7
    assert ratio_mse < 1e-3 and r2_mse < 0.7


class _MSE(torch.nn.Module):
    def forward(self, z1, z2):
        return F.mse_loss(z1, z2)
