import copy
import math
import pickle

import pytest
import torch
from torch import nn

from mitools.op_trace import OpCounter
from mitools.optim import (
    LARS,
    WarmupCosineLR,
    build_optimizer,
    param_groups_lars,
    scaled_lr,
    warmup_cosine,
)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def test_param_groups_split_weights_from_bias_and_norm():
    net = _tiny_net()
    groups = param_groups_lars(net, weight_decay=1e-4)
    assert len(groups) == 2
    decay_ids = {id(p) for p in groups[0]["params"]}
    no_decay_ids = {id(p) for p in groups[1]["params"]}
    assert decay_ids == {id(net[0].weight), id(net[3].weight)}
    assert no_decay_ids == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert groups[0]["weight_decay"] == 1e-4 and groups[0]["lars_adaptation"]
    assert groups[1]["weight_decay"] == 0.0 and not groups[1]["lars_adaptation"]


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_weight_matrix_two_steps_match_hand_computation(foreach):
    torch.manual_seed(1)
    w0 = torch.randn(5, 3, dtype=torch.float64)
    g1 = torch.randn(5, 3, dtype=torch.float64)
    g2 = torch.randn(5, 3, dtype=torch.float64)
    lr, mom, wd, eta = 0.3, 0.9, 1e-2, 0.02
    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=lr, momentum=mom, weight_decay=wd, eta=eta, eps=0.0, foreach=foreach)

    def manual_d(w_val, g):
        trust = eta * w_val.norm() / (g.norm() + wd * w_val.norm())
        return trust * (g + wd * w_val)

    w.grad = g1.clone()
    opt.step()
    buf = manual_d(w0, g1)
    w1 = w0 - lr * buf
    torch.testing.assert_close(w.detach(), w1, rtol=1e-12, atol=1e-14)
    w.grad = g2.clone()
    opt.step()
    buf = mom * buf + manual_d(w1, g2)
    w2 = w1 - lr * buf
    torch.testing.assert_close(w.detach(), w2, rtol=1e-12, atol=1e-14)


def test_lars_clip_lr_caps_trust_ratio_at_one_over_lr():
    w0 = torch.ones(2, 2, dtype=torch.float64)
    g = torch.full((2, 2), 1e-6, dtype=torch.float64)  # huge trust ratio
    w = nn.Parameter(w0.clone())
    w.grad = g.clone()
    LARS([w], lr=0.5, momentum=0.0, eta=1e-3, eps=0.0, clip_lr=True).step()
    # trust/lr >> 1 is clipped to 1: the step equals plain SGD's lr * g.
    torch.testing.assert_close(w.detach(), w0 - 0.5 * g)


def test_lars_bias_and_bn_params_get_plain_sgd_momentum_without_decay():
    net_lars, net_sgd = _tiny_net(), _tiny_net()
    net_sgd.load_state_dict(net_lars.state_dict())
    opt_lars = LARS(param_groups_lars(net_lars, weight_decay=0.1), lr=0.2, momentum=0.9)
    # Independent truth for the excluded group: torch's SGD with momentum and no weight decay.
    no_decay_sgd = [p for n, p in net_sgd.named_parameters() if p.ndim <= 1]
    opt_sgd = torch.optim.SGD(no_decay_sgd, lr=0.2, momentum=0.9, weight_decay=0.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # identical gradients fed to both copies
        for p_l, p_s in zip(net_lars.parameters(), net_sgd.parameters(), strict=True):
            g = torch.randn(p_l.shape, generator=gen)
            p_l.grad = g.clone()
            p_s.grad = g.clone() if p_s.ndim <= 1 else None
        opt_lars.step()
        opt_sgd.step()
    for (name, p_l), (_, p_s) in zip(
        net_lars.named_parameters(), net_sgd.named_parameters(), strict=True
    ):
        if p_l.ndim <= 1:
            torch.testing.assert_close(p_l, p_s, rtol=1e-6, atol=1e-7, msg=name)
        else:  # weights were adapted by LARS, so they must differ from the untouched copy
            assert not torch.allclose(p_l, p_s), name


def test_lars_zero_weight_uses_trust_one():
    w = nn.Parameter(torch.zeros(3, 3))
    w.grad = torch.ones(3, 3)
    LARS([w], lr=0.1, momentum=0.0, weight_decay=0.5).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1))


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_build_optimizer_groups(name):
    net = _tiny_net()
    opt = build_optimizer(name, net, lr=0.1, weight_decay=1e-3)
    wds = sorted(g["weight_decay"] for g in opt.param_groups)
    assert wds == [0.0, 1e-3]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(net.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam", net, lr=0.1)


def test_warmup_cosine_key_steps():
    T, W, base, final = 100, 10, 1.0, 0.1
    assert warmup_cosine(0, T, W, base, final) == 0.0
    assert warmup_cosine(5, T, W, base, final) == pytest.approx(0.5)
    assert warmup_cosine(W, T, W, base, final) == pytest.approx(base)
    assert warmup_cosine(55, T, W, base, final) == pytest.approx((base + final) / 2)
    assert warmup_cosine(T, T, W, base, final) == pytest.approx(final)
    assert warmup_cosine(T + 7, T, W, base, final) == final
    # Direct formula at an arbitrary step.
    expected = final + (base - final) * 0.5 * (1 + math.cos(math.pi * (37 - W) / (T - W)))
    assert warmup_cosine(37, T, W, base, final) == pytest.approx(expected, rel=1e-12)
    assert warmup_cosine(0, T, 0, base) == pytest.approx(base)  # no warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 11, 1.0)


def test_scheduler_follows_function_and_resumes_from_state_dict():
    net = _tiny_net()
    groups = param_groups_lars(net, 0.0)
    groups[1]["lr"] = 0.05  # a group with its own base lr keeps its ratio
    opt = torch.optim.SGD(groups, lr=0.5)
    sched = WarmupCosineLR(opt, total_steps=20, warmup_steps=4, final_lr_ratio=0.1)
    seen = [sched.get_last_lr()]
    for _ in range(20):
        sched.step()
        seen.append(sched.get_last_lr())
    for k, (lr0, lr1) in enumerate(seen):
        assert lr0 == pytest.approx(warmup_cosine(k, 20, 4, 0.5, 0.05))
        assert lr1 == pytest.approx(warmup_cosine(k, 20, 4, 0.05, 0.005))
    # Resume at step 7 in a fresh optimiser / scheduler.
    opt_a = torch.optim.SGD(param_groups_lars(_tiny_net(), 0.0), lr=0.5)
    sched_a = WarmupCosineLR(opt_a, 20, 4)
    for _ in range(7):
        sched_a.step()
    opt_b = torch.optim.SGD(param_groups_lars(_tiny_net(), 0.0), lr=123.0)
    sched_b = WarmupCosineLR(opt_b, 5, 1)
    sched_b.load_state_dict(sched_a.state_dict())
    assert sched_b.get_last_lr() == sched_a.get_last_lr()
    sched_a.step()
    sched_b.step()
    assert sched_b.get_last_lr() == pytest.approx(sched_a.get_last_lr())


def test_scaled_lr_rules():
    assert scaled_lr(0.3, 512) == pytest.approx(0.6)
    assert scaled_lr(0.075, 4096, rule="sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError, match="rule"):
        scaled_lr(0.1, 256, rule="cube")


# --- multi-tensor (foreach) LARS against the per-parameter reference loop -------------------------


def _edge_case_net(dtype: torch.dtype) -> nn.Module:
    """Conv + BN + MLP with a zero weight (trust 1) and a parameter that gets zero gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 4),
        nn.Linear(4, 2, bias=False),
    ).to(dtype)
    with torch.no_grad():
        net[5].weight.zero_()  # ||w|| = 0: trust must fall back to 1
    return net


def _feed_grads(net: nn.Module, step: int, gen: torch.Generator) -> None:
    for i, p in enumerate(net.parameters()):
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if i == 3:  # BN bias: no gradient on the first step, so its buffer is created late
            p.grad = None if step == 0 else p.grad
        if i == 10:  # last Linear weight: zero gradient (||g|| = 0, trust 1)
            p.grad.zero_()
        if i == 4 and step == 2:  # a weight skipped in the middle of training
            p.grad = None


def _run_lars(net, foreach, steps, start=0, state=None, **kw):
    opt = LARS(param_groups_lars(net, kw.pop("weight_decay")), foreach=foreach, **kw)
    if state is not None:
        opt.load_state_dict(state)
    gen = torch.Generator().manual_seed(11)
    for k in range(start + steps):  # draw the same gradient sequence whatever `start`
        grads_state = [p.grad for p in net.parameters()]
        _feed_grads(net, k, gen)
        if k >= start:
            opt.step()
        else:
            for p, g in zip(net.parameters(), grads_state, strict=True):
                p.grad = g
    return opt


def _assert_same_state(net_a, opt_a, net_b, opt_b, rtol, atol):
    for (name, p_a), p_b in zip(net_a.named_parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b, rtol=rtol, atol=atol, msg=name)
        buf_a = opt_a.state[p_a].get("momentum_buffer")
        buf_b = opt_b.state[p_b].get("momentum_buffer")
        assert (buf_a is None) == (buf_b is None), name
        if buf_a is not None:
            torch.testing.assert_close(buf_a, buf_b, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip_lr", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_lars_foreach_matches_loop(dtype, clip_lr, momentum, weight_decay):
    kw = dict(lr=0.4, momentum=momentum, weight_decay=weight_decay, eta=0.02, clip_lr=clip_lr)
    net_loop, net_fe = _edge_case_net(dtype), _edge_case_net(dtype)
    opt_loop = _run_lars(net_loop, False, steps=4, **kw)
    with OpCounter() as rec:
        opt_fe = _run_lars(net_fe, True, steps=4, **kw)
    assert "_foreach_norm" in rec.counts and "linalg_vector_norm" not in rec.counts
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    _assert_same_state(net_loop, opt_loop, net_fe, opt_fe, **tol)
    # Every parameter took part (the zero weight and the late-starting BN bias moved; the
    # zero-gradient weight moved through its weight decay only when weight_decay > 0).
    for i, ((name, p), p0) in enumerate(
        zip(net_fe.named_parameters(), _edge_case_net(dtype).parameters(), strict=True)
    ):
        assert torch.equal(p, p0) == (i == 10 and weight_decay == 0), name


def test_lars_foreach_zero_weight_and_zero_grad_use_trust_one():
    # Independent truth: with trust 1 and no momentum, the step is plain SGD on g + wd * w.
    w0 = nn.Parameter(torch.zeros(3, 3))
    w0.grad = torch.ones(3, 3)
    w1 = nn.Parameter(torch.full((2, 2), 2.0))
    w1.grad = torch.zeros(2, 2)
    LARS([w0, w1], lr=0.1, momentum=0.0, weight_decay=0.5, foreach=True).step()
    torch.testing.assert_close(w0.detach(), torch.full((3, 3), -0.1))
    torch.testing.assert_close(w1.detach(), torch.full((2, 2), 2.0 - 0.1 * 0.5 * 2.0))


@pytest.mark.parametrize("save_foreach", [False, True])
def test_lars_state_dict_crosses_between_paths(save_foreach):
    kw = dict(lr=0.3, momentum=0.9, weight_decay=1e-2, eta=0.02, clip_lr=False)
    # Truth: an uninterrupted run of 5 steps with the reference loop.
    net_ref = _edge_case_net(torch.float64)
    opt_ref = _run_lars(net_ref, False, steps=5, **kw)
    # 2 steps on one path, checkpoint, 3 more steps on the other path in a fresh optimiser.
    net = _edge_case_net(torch.float64)
    state = _run_lars(net, save_foreach, steps=2, **kw).state_dict()
    opt = _run_lars(net, not save_foreach, steps=3, start=2, state=state, **kw)
    assert opt.foreach is (not save_foreach)  # loading a checkpoint does not switch the path
    _assert_same_state(net_ref, opt_ref, net, opt, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_step_never_synchronises_with_the_device(foreach):
    net = _edge_case_net(torch.float32)
    groups = param_groups_lars(net, weight_decay=1e-2)
    opt = LARS(groups, lr=0.4, momentum=0.9, eta=0.02, clip_lr=True, foreach=foreach)
    gen = torch.Generator().manual_seed(0)
    for k in range(3):  # first step (buffer creation) and later ones
        _feed_grads(net, k, gen)
        with OpCounter() as rec:
            opt.step()
        assert rec.counts, "recorder saw nothing"
        assert not rec.syncs, rec.syncs
    # The recorder does see a host synchronisation when there is one.
    with OpCounter() as rec:
        torch.ones(2).sum().item()
    assert rec.syncs


def test_lars_foreach_default_is_device_dependent_and_survives_copy():
    net = _tiny_net()
    opt = build_optimizer("lars", net, lr=0.1, weight_decay=1e-3)
    assert isinstance(opt, LARS) and opt.foreach is None
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    with OpCounter() as rec:
        opt.step()  # CPU parameters: the default runs the reference loop
    assert "linalg_vector_norm" in rec.counts and not any(
        o.startswith("_foreach") for o in rec.counts
    )
    opt_fe = LARS(net.parameters(), lr=0.1, foreach=True)
    assert copy.deepcopy(opt_fe).foreach is True
    assert pickle.loads(pickle.dumps(opt_fe)).foreach is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lars_cuda_default_is_foreach_and_matches_loop():
    template = _edge_case_net(torch.float32)  # CPU copy that draws the gradients
    net_loop, net_fe = _edge_case_net(torch.float32).cuda(), _edge_case_net(torch.float32).cuda()
    kw = dict(lr=0.4, momentum=0.9, eta=0.02, clip_lr=True)
    opt_loop = LARS(param_groups_lars(net_loop, 1e-2), foreach=False, **kw)
    opt_fe = LARS(param_groups_lars(net_fe, 1e-2), **kw)  # foreach=None
    gen = torch.Generator().manual_seed(5)
    for k in range(4):
        _feed_grads(template, k, gen)
        for p_t, p_l, p_f in zip(
            template.parameters(), net_loop.parameters(), net_fe.parameters(), strict=True
        ):
            p_l.grad = None if p_t.grad is None else p_t.grad.cuda()
            p_f.grad = None if p_t.grad is None else p_t.grad.cuda()
        opt_loop.step()
        with OpCounter() as rec:
            opt_fe.step()
        assert "_foreach_norm" in rec.counts
        assert not rec.syncs
    _assert_same_state(net_loop, opt_loop, net_fe, opt_fe, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lars_adaptation", [False, True])
def test_lars_foreach_buffers_survive_in_place_gradient_updates(lars_adaptation):
    # Gradients reused in place (zero_grad(set_to_none=False) + accumulation) must not leak into
    # the momentum buffers; truth: the reference loop fed the same gradients.
    ws = [torch.randn(3, 2, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    params = {fe: [nn.Parameter(w.clone()) for w in ws] for fe in (False, True)}
    opts = {
        fe: LARS(ps, lr=0.1, momentum=0.9, lars_adaptation=lars_adaptation, foreach=fe)
        for fe, ps in params.items()
    }
    for k in range(3):
        for fe, ps in params.items():
            for i, p in enumerate(ps):
                g = torch.full_like(p, float(k + i + 1))
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)
            opts[fe].step()
    for p_l, p_f in zip(params[False], params[True], strict=True):
        torch.testing.assert_close(p_f, p_l, rtol=1e-6, atol=1e-7)
        assert opts[True].state[p_f]["momentum_buffer"] is not p_f.grad
