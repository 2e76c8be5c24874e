import math

import pytest
import torch
from torch import nn

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


def test_lars_weight_matrix_two_steps_match_hand_computation():
    torch.manual_seed(1)
    w0 = torch.randn(5, 3, dtype=torch.float64)
    g1 = torch.randn(5, 3, dtype=torch.float64)
    g2 = torch.randn(5, 3, dtype=torch.float64)
    lr, mom, wd, eta = 0.3, 0.9, 1e-2, 0.02
    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=lr, momentum=mom, weight_decay=wd, eta=eta, eps=0.0)

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
