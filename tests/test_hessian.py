"""mitools.hessian against dense Hessians (torch.func.hessian / autograd) of tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from mitools.hessian import (
    HessianOperator,
    dense_operator,
    freeze_views,
    hessian_summary,
    per_layer_operators,
    spectral_density,
    top_eigenvalues,
    trace,
)
from mitools.losses import build_loss
from mitools.models import EncoderSpec, SSLModel

SSL = ["emi", "mio", "simclr", "barlow_twins", "vicreg", "byol", "corinfomax", "mec"]


def mlp_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = EncoderSpec(
        arch="mlp",
        input_dim=6,
        widths=[8],
        projector_dims=[6],
        projector_bn=False,
        projector_last_bn=False,
    )
    return SSLModel(spec).double().eval()  # 126 params, BN in the backbone


def cnn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = EncoderSpec(
        arch="small_cnn",
        in_channels=1,
        widths=[3, 4],
        projector_dims=[3],
        projector_bn=False,
        projector_last_bn=False,
    )
    return SSLModel(spec).double().eval()  # 164 params


def views(model_kind: str, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if model_kind == "mlp" else (n, 1, 6, 6)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64)
    return x1, x1 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)


def closure(name: str):
    loss = build_loss(name).eval()  # eval: stateful losses (CorInfoMax, EMA) do not update

    def loss_fn(model, batch):
        return loss(model(batch[0])[1], model(batch[1])[1])

    return loss_fn


def dense_truth(model: nn.Module, loss_fn, batch, names=None) -> torch.Tensor:
    """torch.func.hessian of the loss as a function of the flat selected parameters."""
    named = {n: p.detach() for n, p in model.named_parameters() if names is None or n in names}
    sizes = [p.numel() for p in named.values()]
    flat = torch.cat([p.reshape(-1) for p in named.values()])

    def f(theta):
        parts = dict(
            zip(
                named,
                (c.view_as(p) for c, p in zip(theta.split(sizes), named.values(), strict=False)),
                strict=False,
            )
        )
        wrapped = _Wrap(model, loss_fn)
        return functional_call(wrapped, {f"m.{k}": v for k, v in parts.items()}, (batch,))

    return hessian(f)(flat)


class _Wrap(nn.Module):
    def __init__(self, m, fn):
        super().__init__()
        self.m = m
        self.fn = fn

    def forward(self, b):
        return self.fn(self.m, b)


CASES = [(kind, name) for kind in ("mlp", "cnn") for name in SSL]
_CACHE: dict = {}


def case(kind: str, name: str):
    key = (kind, name)
    if key not in _CACHE:
        model = mlp_model() if kind == "mlp" else cnn_model()
        fn = closure(name)
        batch = views(kind)
        H = dense_truth(model, fn, batch)
        _CACHE[key] = (model, fn, batch, H, torch.linalg.eigvalsh(H))
    return _CACHE[key]


@pytest.mark.parametrize("kind,name", CASES)
def test_top_and_bottom_eigenvalues_match_dense(kind, name):
    model, fn, batch, H, ev = case(kind, name)
    op = HessianOperator(model, fn, batch)
    res = top_eigenvalues(op, k=5, which="both", tol=1e-10, seed=1)
    top = ev.flip(0)[:5].numpy()
    scale = float(ev.abs().max())
    # 1e-4 relative to each eigenvalue (floored at 1e-4 of the spectral radius for tiny ones)
    np.testing.assert_allclose(res.largest, top, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(res.smallest[0], ev[0].item(), rtol=1e-4, atol=1e-6 * scale)
    assert res.converged and res.iterations <= op.n_params
    assert np.all(res.residual_norms < 1e-4 * scale)
    Y = res.eigenvectors
    assert torch.allclose(Y.T @ Y, torch.eye(Y.shape[1], dtype=Y.dtype), atol=1e-6)


def test_operator_matvec_and_matmat_equal_dense_products():
    model, fn, batch, H, _ = case("cnn", "simclr")
    V = torch.randn(H.shape[0], 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for hvp in ("graph", "vjp", "func", "auto"):
        op = HessianOperator(model, fn, batch, hvp=hvp)
        assert torch.allclose(op @ V, H @ V, atol=1e-9)
        assert torch.allclose(op @ V[:, 0], H @ V[:, 0], atol=1e-9)


def _max_err(A: torch.Tensor, B: torch.Tensor) -> float:
    """max |A - B| relative to max(1, max |B|)."""
    return float((A - B).abs().max()) / max(1.0, float(B.abs().max()))


@pytest.mark.parametrize("kind,name", [("cnn", "simclr"), ("mlp", "barlow_twins")])
def test_block_engines_equal_dense_and_each_other(kind, name):
    """Every matmat engine and chunking (uneven last chunk included) gives H @ V of the dense
    torch.func Hessian to 1e-10 (float64), and the engines agree with each other to 1e-10."""
    model, fn, batch, H, _ = case(kind, name)
    V = torch.randn(H.shape[0], 20, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    truth = H @ V
    got = {}
    for hvp, chunk in [
        ("graph", None),
        ("vjp", None),
        ("vjp", 3),
        ("vjp", 64),
        ("func", None),
        ("func", 6),
        ("auto", None),
    ]:
        op = HessianOperator(model, fn, batch, hvp=hvp, chunk_size=chunk)
        got[hvp, chunk] = op.matmat(V)
        assert op.n_matvecs == V.shape[1]
        assert _max_err(got[hvp, chunk], truth) < 1e-10, (hvp, chunk)
    for key, val in got.items():
        assert _max_err(val, got["graph", None]) < 1e-10, key


@pytest.mark.parametrize("hvp", ["vjp", "func"])
def test_block_engines_bn_train_mode_match_autograd_hessian(hvp):
    """Batched torch.func engines with BN on batch statistics: H @ V against the dense autograd
    Hessian of the train-mode model, and model state untouched."""
    import copy

    model = cnn_model()
    fn = closure("simclr")
    batch = views("cnn")
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False  # batch statistics, no buffer updates
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, fn, batch, bn_mode="train", hvp=hvp, chunk_size=7)
    V = torch.randn(
        op.n_params, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    got = op @ V
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training  # eval model stays eval
    # truth by torch.autograd.functional.hessian (no vmap, so no batching rule is trusted)
    ps = list(ref.parameters())
    sizes = [p.numel() for p in ps]

    def f(theta):
        chunks = theta.split(sizes)
        d = {n: c.view_as(p) for (n, p), c in zip(ref.named_parameters(), chunks, strict=False)}
        return functional_call(_Wrap(ref, fn), {f"m.{k}": v for k, v in d.items()}, (batch,))

    H = torch.autograd.functional.hessian(f, torch.cat([p.detach().reshape(-1) for p in ps]))
    assert _max_err(got, H @ V) < 1e-10
    assert (
        _max_err(HessianOperator(model, fn, batch, bn_mode="train", hvp="graph") @ V, got) < 1e-10
    )


def test_power_iteration_top_and_bottom():
    model, fn, batch, H, ev = case("mlp", "mio")
    op = HessianOperator(model, fn, batch)
    res = top_eigenvalues(op, k=1, method="power", which="both", tol=1e-5, max_iter=3000, seed=0)
    scale = float(ev.abs().max())
    np.testing.assert_allclose(res.largest, ev.flip(0)[:1].numpy(), rtol=1e-4, atol=1e-6 * scale)
    # deflation (second pair) on the same products through the dense matrix
    res2 = top_eigenvalues(dense_operator(H), k=3, method="power", tol=1e-8, max_iter=5000)
    np.testing.assert_allclose(res2.eigenvalues, ev.flip(0)[:3].numpy(), rtol=1e-4)
    np.testing.assert_allclose(res.smallest[0], ev[0].item(), rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("kind,name", [("mlp", "simclr"), ("cnn", "barlow_twins"), ("cnn", "emi")])
def test_trace_within_three_standard_errors(kind, name):
    model, fn, batch, H, _ = case(kind, name)
    op = HessianOperator(model, fn, batch)
    truth = float(torch.trace(H))
    for method in ("hutchinson", "hutch++"):
        r = trace(op, method, n_probes=60, seed=2)
        assert abs(r.estimate - truth) <= 3 * r.std_error, (method, r.estimate, truth, r.std_error)
        assert r.n_probes == 60


@pytest.mark.parametrize("kind,name", [("cnn", "barlow_twins"), ("mlp", "emi")])
def test_hutchpp_has_lower_variance_than_hutchinson(kind, name):
    """Same 30 products per estimate, 40 seeds each: F-test style ratio of sample variances.
    Hutch++ wins where the spectrum has dominant eigenvalues (predicted variance ratio
    ||H||_F^2-offdiag vs tail after the top 10: ~10.8 and ~8.3 for these cases; for flat spectra,
    e.g. MIO/SimCLR here, theory predicts < 1 at 30 products and we do not claim it)."""
    model, fn, batch, H, ev = case(kind, name)
    op = dense_operator(H)  # identical products to HessianOperator (tested above), much cheaper
    est = {
        m: np.array([trace(op, m, 30, seed=s).estimate for s in range(40)])
        for m in ("hutchinson", "hutch++")
    }
    var_h, var_pp = est["hutchinson"].var(ddof=1), est["hutch++"].var(ddof=1)
    # F(39, 39) 0.999 quantile is about 2.7; demand a ratio above it
    assert var_h / var_pp > 2.7, (var_h, var_pp)


@pytest.mark.parametrize("kind,name", CASES)
def test_density_moments_match_exact_within_sampling_error(kind, name):
    """Run r gives v^T H^p v exactly (p <= 2 steps - 1), v = z/sqrt(n), z Rademacher, so the
    mean over R runs is unbiased for tr(H^p)/n with variance 2 (||A||_F^2 - sum A_ii^2)/(n^2 R),
    A = H^p. Allow 4.5 of those standard deviations."""
    model, fn, batch, H, ev = case(kind, name)
    op = HessianOperator(model, fn, batch)
    runs, steps = 12, 8
    res = spectral_density(op, runs=runs, steps=steps, seed=4)
    n = H.shape[0]
    np.testing.assert_allclose(res.weights.sum(1), 1.0, atol=1e-10)
    for p in range(1, 5):
        A = torch.linalg.matrix_power(H, p)
        exact = float(torch.trace(A)) / n
        sd = math.sqrt(2 * (float((A**2).sum()) - float((A.diagonal() ** 2).sum())) / runs) / n
        assert abs(res.moment(p) - exact) <= 4.5 * sd + 1e-9 * abs(exact), (
            p,
            res.moment(p),
            exact,
            sd,
        )
    # smoothed density is a probability density on its grid
    integral = np.trapezoid(res.density, res.grid)
    assert abs(integral - 1) < 1e-3


def test_density_full_steps_recovers_spectrum():
    """steps >= n: the Krylov space is everything, nodes are the eigenvalues (every one with a
    non-zero weight) and every moment is exact for that start vector."""
    model, fn, batch, H, ev = case("mlp", "byol")
    res = spectral_density(HessianOperator(model, fn, batch), runs=1, steps=10_000, seed=0)
    assert res.steps <= H.shape[0]
    scale = float(ev.abs().max())
    live = res.weights[0] > 1e-12
    # each node with weight is (numerically) an eigenvalue of H
    dist = np.abs(res.nodes[0][live][:, None] - ev.numpy()[None, :]).min(1)
    assert dist.max() < 1e-7 * scale
    assert abs(res.nodes[0][live].max() - ev[-1].item()) < 1e-7 * scale


def test_block_operators_equal_dense_blocks():
    model, fn, batch, H, _ = case("cnn", "barlow_twins")
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]]), strict=False))
    ops = per_layer_operators(model, fn, batch)
    assert len(ops) >= 4
    for key, op in ops.items():
        idx = np.concatenate(
            [
                np.arange(offsets[n], offsets[n] + s)
                for n, s in zip(names, sizes, strict=False)
                if n in op.param_names
            ]
        )
        block = H[np.ix_(idx, idx)]
        assert torch.allclose(op.to_dense(), block, atol=1e-9), key
    # regex selection: projector block only
    op = HessianOperator(model, fn, batch, params=r"^projector\.")
    idx = np.concatenate(
        [
            np.arange(offsets[n], offsets[n] + s)
            for n, s in zip(names, sizes, strict=False)
            if n.startswith("projector.")
        ]
    )
    assert torch.allclose(op.to_dense(), H[np.ix_(idx, idx)], atol=1e-9)


def test_bn_train_mode_uses_batch_stats_and_restores_state():
    model = cnn_model()
    model.train()  # caller's mode: must come back unchanged
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn = closure("simclr")
    batch = views("cnn")
    op = HessianOperator(model, fn, batch, bn_mode="train")
    V = torch.randn(op.n_params, 3, dtype=torch.float64)
    got = op @ V
    op_f = HessianOperator(model, fn, batch, bn_mode="train", hvp="graph")
    got_g = op_f @ V
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(m.training for m in model.modules())
    # truth: autograd Hessian on a copy in train mode (batch statistics)
    import copy

    ref = copy.deepcopy(model).train()
    ps = [p for p in ref.parameters()]
    sizes = [p.numel() for p in ps]

    def f(theta):
        chunks = theta.split(sizes)
        d = {n: c.view_as(p) for (n, p), c in zip(ref.named_parameters(), chunks, strict=False)}
        return functional_call(_Wrap(ref, fn), {f"m.{k}": v for k, v in d.items()}, (batch,))

    flat = torch.cat([p.detach().reshape(-1) for p in ps])
    H = torch.autograd.functional.hessian(f, flat)
    assert torch.allclose(got, H @ V, atol=1e-8)
    assert torch.allclose(got_g, H @ V, atol=1e-8)
    H_eval = case("cnn", "simclr")[3]
    assert not torch.allclose(H, H_eval, atol=1e-3)  # the two modes are different objects


def test_loader_mean_of_per_batch_hessians():
    model = mlp_model()
    fn = closure("simclr")
    b1, b2 = views("mlp", seed=0), views("mlp", seed=1)
    H1, H2 = dense_truth(model, fn, b1), dense_truth(model, fn, b2)
    op = HessianOperator(model, fn, loader=[b1, b2])
    assert torch.allclose(op.to_dense(), (H1 + H2) / 2, atol=1e-9)


def test_float32_and_supervised_closure():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))

    def ce(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    import copy

    H64 = dense_truth(copy.deepcopy(net).double(), ce, (x.double(), y))
    op = HessianOperator(net, ce, (x, y))
    assert op.dtype == torch.float32
    res = top_eigenvalues(op, k=3, tol=1e-5)
    np.testing.assert_allclose(
        res.eigenvalues, torch.linalg.eigvalsh(H64).flip(0)[:3].numpy(), rtol=2e-3
    )
    tr = trace(op, "hutchinson", 64, seed=0)
    assert abs(tr.estimate - float(torch.trace(H64))) <= 3 * tr.std_error


def test_bad_inputs_raise_value_error():
    model, fn, batch, H, _ = case("mlp", "simclr")
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(model, lambda m, b: m(b[0])[1].sum(0), batch)
    with pytest.raises(ValueError, match="not finite"):
        HessianOperator(model, lambda m, b: m(b[0])[1].sum() * float("nan"), batch)
    frozen = mlp_model()
    first = next(frozen.parameters())
    first.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        HessianOperator(frozen, fn, batch, params=[first])
    net = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})
    with pytest.raises(ValueError, match="not used by the loss"):
        HessianOperator(net, lambda m, b: (m["a"](b) ** 2).sum(), torch.randn(4, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        HessianOperator(model, fn, batch, chunk_size=0)
    with pytest.raises(ValueError, match="hvp must be"):
        HessianOperator(model, fn, batch, hvp="forward")
    with pytest.raises(ValueError, match="no parameter name matches"):
        HessianOperator(model, fn, batch, params="nonexistent")
    op = HessianOperator(model, fn, batch)
    with pytest.raises(ValueError, match="larger than the number of parameters"):
        top_eigenvalues(op, k=op.n_params + 1)
    with pytest.raises(ValueError, match="non-finite"):
        op.matvec(torch.full((op.n_params,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="expected"):
        op.matvec(torch.zeros(3, dtype=torch.float64))

    def steep(m, b):  # finite loss and gradient, but H v overflows for a large finite v
        return 1e300 * sum((p**2).sum() for p in m.parameters()) * 1e-10

    op = HessianOperator(model, steep, batch)
    with pytest.raises(ValueError, match="non-finite"):
        op @ torch.full((op.n_params,), 1e20, dtype=torch.float64)


def test_freeze_views_deterministic_and_summary():
    data = torch.rand(50, 1, 8, 8)

    def aug(x, generator=None):
        noise = torch.randn(x.shape, generator=generator)
        return x + 0.1 * noise, x - 0.1 * noise

    a1, a2 = freeze_views(data, 10, aug, seed=3)
    b1, b2 = freeze_views(data, 10, aug, seed=3)
    c1, _ = freeze_views(data, 10, aug, seed=4)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, c1)
    with pytest.raises(ValueError, match="n must be"):
        freeze_views(data, 51, aug)
    model, fn, batch, H, ev = case("mlp", "mio")
    s = hessian_summary(model, fn, batch, k=3, n_probes=30, seed=0)
    np.testing.assert_allclose(s["top_eigenvalues"], ev.flip(0)[:3].numpy(), rtol=1e-4)
    np.testing.assert_allclose(s["min_eigenvalue"], ev[0].item(), rtol=1e-4)
    assert abs(s["trace"] - float(torch.trace(H))) <= 3 * s["trace_std_error"]
