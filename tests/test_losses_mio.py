"""MIOLoss: v1 reference semantics by loops, the Jensen-Shannon identity, closed-form gradient."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mitools.losses import MIOLoss, build_loss, mio_gradient, mio_loss


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matrices: thread start-up dominates on a shared machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _data(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    z1 = base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = 2.0 * base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _v1_by_loops(z1, z2, tau_p, tau_n, lam):
    """Independent transcription of the v1 reference: loops over the 2N x 2N cosine matrix."""
    z = np.vstack([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    pos, neg = [], []
    for i in range(n2):
        for j in range(n2):
            s = float(u[i] @ u[j])
            if j == i:
                continue
            if j == (i + n) % n2:
                pos.append(_softplus(-s / tau_p))
            else:
                neg.append(_softplus(s / tau_n))
    assert len(pos) == n2 and len(neg) == n2 * (n2 - 2)
    return np.mean(pos) + np.mean(neg) + lam * np.mean((z1 - z2) ** 2)


@pytest.mark.parametrize("tau_p,tau_n,lam", [(0.5, 0.5, 0.0), (0.5, 0.5, 1.0), (0.2, 0.9, 0.3)])
def test_default_matches_v1_reference_by_loops(tau_p, tau_n, lam):
    z1, z2 = _data(n=7, d=5, seed=1)
    loss = MIOLoss(tau_p=tau_p, tau_n=tau_n, lam=lam)(z1, z2)
    assert float(loss) == pytest.approx(
        _v1_by_loops(z1.numpy(), z2.numpy(), tau_p, tau_n, lam), abs=1e-12
    )


def test_equals_negative_jensen_shannon_bound():
    """lam=0, tau_p=tau_n=tau: loss = -(E_pos[-softplus(-T)] - E_neg[softplus(T)]), T = cos/tau,
    i.e. -(E_pos[log sigmoid(T)] + E_neg[log(1 - sigmoid(T))])."""
    z1, z2 = _data(n=8, d=3, seed=2)
    tau = 0.7
    z = torch.cat([z1, z2]).numpy()
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    T = u @ u.T / tau
    n2 = len(z)
    sig = 1.0 / (1.0 + np.exp(-T))
    pos_mask = np.zeros((n2, n2), dtype=bool)
    pos_mask[np.arange(n2), (np.arange(n2) + n2 // 2) % n2] = True
    neg_mask = ~pos_mask & ~np.eye(n2, dtype=bool)
    jsd_bound = np.mean(np.log(sig[pos_mask])) + np.mean(np.log(1.0 - sig[neg_mask]))
    mio = MIOLoss(tau_p=tau, tau_n=tau, lam=0.0)
    assert float(mio(z1, z2)) == pytest.approx(-jsd_bound, abs=1e-12)
    assert float(mio.last_terms["jsd_bound"]) == pytest.approx(jsd_bound, abs=1e-12)


def _options():
    out = []
    for neg, rpr, bound, lam, mse_on, taus in itertools.product(
        ["all", "cross_view"],
        [False, True],
        [None, 0.2],
        [0.0, 0.7],
        ["raw", "normalized"],
        [(0.5, 0.5), (0.3, 0.8)],
    ):
        if rpr and neg != "all":
            continue
        out.append(
            dict(
                negatives=neg,
                remove_positive_repulsion=rpr,
                negative_bound=bound,
                lam=lam,
                mse_on=mse_on,
                tau_p=taus[0],
                tau_n=taus[1],
            )
        )
    return out


OPTIONS = _options()


def _loss_of_normalized(u1, u2, z1, z2, o):
    """Second implementation, written on the normalised rows directly (for wrt='normalized')."""
    n = u1.shape[0]
    u = torch.cat([u1, u2])
    S = u @ u.T
    idx = torch.arange(2 * n)
    pos = S[idx, (idx + n) % (2 * n)]
    if o["remove_positive_repulsion"]:
        c = (u1 + u2) / 2
        G = c @ c.T
        neg = G[~torch.eye(n, dtype=torch.bool)]
    else:
        keep = ~torch.eye(2 * n, dtype=torch.bool)
        keep[idx, (idx + n) % (2 * n)] = False
        if o["negatives"] == "cross_view":
            keep &= (idx[:, None] < n) != (idx[None, :] < n)
        neg = S[keep]
    if o["negative_bound"] is not None:
        neg = torch.minimum(neg, torch.tensor(o["negative_bound"], dtype=neg.dtype))
    total = torch.nn.functional.softplus(-pos / o["tau_p"]).mean()
    total = total + torch.nn.functional.softplus(neg / o["tau_n"]).mean()
    if o["mse_on"] == "normalized":
        total = total + o["lam"] * ((u1 - u2) ** 2).mean()
    return total


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_closed_form_gradient_matches_autograd(opts):
    z1, z2 = _data(n=6, d=4, seed=3)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss, _ = mio_loss(a, b, **opts)
    ga, gb = torch.autograd.grad(loss, (a, b))
    g1, g2 = mio_gradient(z1, z2, **opts)
    assert torch.allclose(g1, ga, atol=1e-10, rtol=0) and torch.allclose(g2, gb, atol=1e-10, rtol=0)
    u1 = (z1 / z1.norm(dim=1, keepdim=True)).requires_grad_(True)
    u2 = (z2 / z2.norm(dim=1, keepdim=True)).requires_grad_(True)
    gu1, gu2 = torch.autograd.grad(_loss_of_normalized(u1, u2, z1, z2, opts), (u1, u2))
    h1, h2 = mio_gradient(z1, z2, wrt="normalized", **opts)
    assert torch.allclose(h1, gu1, atol=1e-10, rtol=0) and torch.allclose(
        h2, gu2, atol=1e-10, rtol=0
    )
    # the bound must actually be active for some pairs, else the option is untested
    if opts["negative_bound"] is not None and not opts["remove_positive_repulsion"]:
        u = torch.cat([u1, u2]).detach()
        assert bool(((u @ u.T) > opts["negative_bound"]).any())


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_gradcheck(opts):
    z1, z2 = _data(n=4, d=3, seed=4)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    mio = MIOLoss(**opts)
    assert torch.autograd.gradcheck(lambda a, b: mio(a, b), (z1, z2), eps=1e-6, atol=1e-8)


def test_negative_counts_and_options_change_value():
    z1, z2 = _data(n=5, d=3, seed=5)
    base = float(MIOLoss()(z1, z2))
    for kw in (
        {"negatives": "cross_view"},
        {"remove_positive_repulsion": True},
        {"negative_bound": 0.0},
        {"lam": 1.0},
        {"lam": 1.0, "mse_on": "normalized"},
    ):
        assert abs(float(MIOLoss(**kw)(z1, z2)) - base) > 1e-6, kw
    # negative_bound = -1: every negative logit is clamped: constant term, no repulsion gradient
    mio = MIOLoss(negative_bound=-1.0)
    mio(z1, z2)
    assert float(mio.last_terms["negative"]) == pytest.approx(_softplus(-1.0 / 0.5), abs=1e-12)


def test_remove_positive_repulsion_gives_both_views_the_same_negative_gradient():
    z1, z2 = _data(n=6, d=4, seed=6)
    # tau_p -> large makes the positive-term gradient negligible; isolate the negative term exactly
    h1, h2 = mio_gradient(z1, z2, wrt="normalized", remove_positive_repulsion=True, tau_p=1e12)
    assert torch.allclose(h1, h2, atol=1e-12)
    k1, k2 = mio_gradient(z1, z2, wrt="normalized", tau_p=1e12)
    assert not torch.allclose(k1, k2, atol=1e-6)


def test_bad_inputs_and_config():
    z1, z2 = _data()
    with pytest.raises(ValueError, match="same shape"):
        MIOLoss()(z1, z2[:-1])
    inf = z1.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        MIOLoss()(inf, z2)
    with pytest.raises(ValueError, match="temperature tau_p"):
        MIOLoss(tau_p=0.0)
    with pytest.raises(ValueError, match="negatives"):
        MIOLoss(negatives="hard")
    with pytest.raises(ValueError, match="remove_positive_repulsion"):
        MIOLoss(negatives="cross_view", remove_positive_repulsion=True)
    with pytest.raises(TypeError, match="tau"):
        build_loss("mio", tau=0.5)


def test_mio_loss_never_synchronises_with_the_device():
    # boolean indexing (S[mask]) is a host sync on CUDA on every step (aten::index with a bool
    # mask runs nonzero inside); the loss uses no indexing at all
    from mitools.op_trace import OpCounter

    z1 = torch.randn(16, 8, requires_grad=True)
    z2 = torch.randn(16, 8, requires_grad=True)
    for options in ({}, {"remove_positive_repulsion": True, "negative_bound": 0.5},
                    {"negatives": "cross_view", "lam": 1.0}):  # fmt: skip
        with OpCounter() as ops:
            MIOLoss(check_finite=False, **options)(z1, z2).backward()
        assert not ops.syncs, (options, ops.syncs)
    with OpCounter() as ops:
        MIOLoss(check_finite=True)(z1, z2)
    assert "_local_scalar_dense" in ops.syncs  # the recorder sees a sync where there is one


def test_mio_builds_its_masks_once_and_no_mse_graph_without_lam():
    # launch count matters on a GPU at small sizes: the negative weights are built on the first
    # call for a batch size and reused; with lam = 0 the logged MSE has no backward
    from mitools.op_trace import OpCounter

    z1 = torch.randn(12, 8, requires_grad=True)
    z2 = torch.randn(12, 8, requires_grad=True)
    loss_fn = MIOLoss(check_finite=False, lam=0.0)
    with OpCounter() as first:
        loss_fn(z1, z2).backward()
    with OpCounter() as second:
        loss_fn(z1, z2).backward()
    assert first.counts["eye"] == 1 and second.counts["eye"] == 0
    assert second.counts["mse_loss"] == 1 and second.counts["mse_loss_backward"] == 0
    with OpCounter() as with_lam:
        MIOLoss(check_finite=False, lam=0.5)(z1, z2).backward()
    assert with_lam.counts["mse_loss_backward"] > 0  # the control: the recorder sees it
    # a batch size never seen before builds its own weights, and they are right
    loss_fn(z1[:5], z2[:5])
    from mitools.losses.mio import _negative_weights

    w = _negative_weights(5, z1.device, "all", torch.float32)
    assert w.shape == (10, 10) and float(w.sum()) == 10 * 8 and not w.diagonal().any()
    assert not w.diagonal(5).any() and not w.diagonal(-5).any()


def test_mio_cached_weights_made_in_inference_mode_still_train():
    # an evaluation under inference_mode may be the first call for a batch size; the cached
    # weights must still be usable (saved for backward) by a later training step
    z1 = torch.randn(7, 5, requires_grad=True)
    z2 = torch.randn(7, 5, requires_grad=True)
    with torch.inference_mode():
        MIOLoss(check_finite=False)(z1.detach(), z2.detach())
    MIOLoss(check_finite=False)(z1, z2).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
