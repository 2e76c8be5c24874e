"""``train.compile`` (inductor's CPU backend), ``train.amp`` (CPU autocast) and
``train.channels_last`` (forced on the CPU) against the eager float32 run of the same tiny digits
EMI config (the shipped loss: exact log-det, batch covariance, float64 with autocast off inside the
loss).

The runs use SGD without warm-up: the digits config's 2 warm-up epochs would make the first
step's learning rate 0, and AdamW turns the rounding noise of gradients that are zero in exact
arithmetic (the projector bias before BN; EMI is invariant to shifts of z, so the last bias) into
full +-lr steps (measured: up to 3.9e-3 apart after ONE compiled vs eager AdamW step, against
3e-8 with SGD). Gradients are compared as one vector, ||a - b|| / ||b||, for the same reason.
What each run's optimiser saw (initial weights, gradients at each step) is read with a spy on
``build_optimizer_from_config``; layer output dtypes with forward hooks.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_trainer import CONFIGS, _state
from torch import nn

from mitools.models import EncoderSpec, SSLModel
from trainers import pretrain
from trainers.config import ConfigError, load_config

RUN = [
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "train.deterministic=true",
    "train.log_every_steps=1",
    "train.progress=false",
    "train.tensorboard=false",
    "data.batch_size=64",
    "model.widths=[8,16,16]",
    "model.projector_dims=[16,8]",
    "eval.every_epochs=0",
    "optim.name=sgd",
    "optim.warmup_epochs=0",
]


def _cfg(run_dir: Path, extra: list[str] | None = None):
    return load_config(
        CONFIGS / "digits_emi.yaml", [*RUN, f"train.run_dir={run_dir}", *(extra or [])]
    )


def _run(run_dir: Path, monkeypatch, extra: list[str] | None = None, hooks: bool = False) -> dict:
    """One training run; returns its step losses, its last.pt, and what its optimiser saw: the
    initial weights and the gradients at each optimiser step (a step skipped by the GradScaler
    has none). ``hooks``: also the dtypes of every conv/linear output and of the loss."""
    rec: dict = {"grads": [], "out_dtypes": set(), "loss_dtypes": set()}
    build, ssl_loss = pretrain.build_optimizer_from_config, pretrain.ssl_loss

    def spy_build(cfg, model):
        optimizer = build(cfg, model)
        named = list(model.named_parameters())
        rec["init"] = {n: p.detach().clone() for n, p in named}

        def before_step(opt, args, kwargs):
            grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
            rec["grads"].append(grads)

        optimizer.register_step_pre_hook(before_step)
        if hooks:
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.register_forward_hook(lambda mod, x, out: rec["out_dtypes"].add(out.dtype))
        return optimizer

    def spy_loss(*args, **kwargs):
        loss = ssl_loss(*args, **kwargs)
        rec["loss_dtypes"].add(loss.dtype)
        return loss

    with monkeypatch.context() as m:
        m.setattr(pretrain, "build_optimizer_from_config", spy_build)
        if hooks:
            m.setattr(pretrain, "ssl_loss", spy_loss)
        pretrain.train(_cfg(run_dir, extra))
    rec["losses"] = [r["loss"] for r in pretrain.read_metrics(run_dir, "step")]
    rec["state"] = _state(run_dir / "last.pt")
    return rec


def _rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors of b together."""
    assert a.keys() == b.keys()
    diff = math.sqrt(sum(float((a[k] - b[k]).double().norm()) ** 2 for k in b))
    return diff / math.sqrt(sum(float(b[k].double().norm()) ** 2 for k in b))


def _update(run: dict) -> dict[str, torch.Tensor]:
    return {k: run["state"]["model"][k] - w0 for k, w0 in run["init"].items()}


# ----------------------------------------------------------------------------- train.compile


@pytest.mark.slow  # inductor's CPU code generation: about 40-60 s with a cold cache
def test_compiled_model_gives_the_eager_run_and_an_eager_checkpoint(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    two = ["train.max_steps_per_epoch=2"]
    eager = _run(tmp_path / "eager", monkeypatch, two)
    graphs = counters["stats"]["unique_graphs"]
    try:
        compiled = _run(tmp_path / "compiled", monkeypatch, [*two, "train.compile=true"])
        # the model went through inductor (an error would raise; nothing ran eagerly instead)
        assert counters["stats"]["unique_graphs"] > graphs
        for name, value in eager["init"].items():  # same seed, same initial model
            assert torch.equal(compiled["init"][name], value), name
        assert len(eager["losses"]) == len(compiled["losses"]) == 2
        assert len(eager["grads"]) == len(compiled["grads"]) == 2
        # Measured (seed 0): losses 3.8e-7 and 5.1e-7 apart (relative), gradients 4.6e-6 and
        # 5.6e-6, weights and BN statistics after the 2 steps at most 1.8e-7 (largest update
        # 5.5e-3): inductor reorders float32 reductions; a wrong forward or backward is far
        # beyond these bounds. Step 2 runs on the weights updated by step 1, so a compiled
        # module that did not share the optimiser's parameters would show there.
        assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-5)
        for step in range(2):
            assert _rel_err(compiled["grads"][step], eager["grads"][step]) < 1e-4, step
        got, want = compiled["state"]["model"], eager["state"]["model"]
        assert got.keys() == want.keys()
        for key, value in want.items():
            if value.is_floating_point():
                torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
            else:
                assert torch.equal(got[key], value), key
        assert max(float(u.abs().max()) for u in _update(eager).values()) > 1e-3  # not vacuous
    finally:
        torch._dynamo.reset()  # no compiled TwoViewModel.forward left for later tests

    # The checkpoint is the plain model's (no ``_orig_mod.`` wrapper prefix): it loads strictly
    # into a fresh eager model, and an eager run resumes from it.
    path = tmp_path / "compiled" / "last.pt"
    state = compiled["state"]
    assert not [k for k in state["model"] if k.startswith("_orig_mod.")]
    SSLModel(EncoderSpec.from_dict(state["encoder_spec"])).load_state_dict(state["model"])
    # an eager run loads all of it (optimiser, scheduler, scaler, loss state) and, the run
    # being complete, has nothing left to do; more epochs would be another schedule (refused)
    assert pretrain.check_resume(_cfg(tmp_path / "compiled", two), str(path)) == path
    summary = pretrain.train(_cfg(tmp_path / "compiled", two), resume=str(path))
    assert (summary["epoch"], summary["step"]) == (1, 2) and not summary["interrupted"]
    with pytest.raises(ConfigError, match=r"train.epochs: checkpoint 1, config 2"):
        pretrain.check_resume(_cfg(tmp_path / "compiled", ["train.epochs=2", *two]), str(path))


# ----------------------------------------------------------------------------- train.amp


def test_bf16_autocast_on_cpu_is_close_to_float32(tmp_path, monkeypatch):
    ref = _run(tmp_path / "fp32", monkeypatch, hooks=True)
    bf16 = _run(tmp_path / "bf16", monkeypatch, ["train.amp=bf16"], hooks=True)
    # autocast ran: every conv/linear output in bfloat16; the loss stays float64 (EMI computes
    # its covariance and log-dets in float64 with autocast off)
    assert ref["out_dtypes"] == {torch.float32} and bf16["out_dtypes"] == {torch.bfloat16}
    assert ref["loss_dtypes"] == bf16["loss_dtypes"] == {torch.float64}
    (loss,), (ref_loss,) = bf16["losses"], ref["losses"]
    assert math.isfinite(loss) and loss != ref_loss
    # Measured relative to float32 (seeds 0 / 1 / 2): loss 1.1e-3 / 1.4e-2 / 3.8e-4, gradient
    # 0.16 / 0.13 / 0.20. bf16 keeps 8 mantissa bits (rounding 2^-9 = 2e-3 per value); EMI's
    # log-dets of near-singular covariances (ridge 1e-4) amplify it. Seed 0 here; the bounds
    # leave room for other CPUs' bf16 kernels. The gradient bound still rejects another batch's
    # gradient (the float32 gradients of steps 2 and 3 are 1.28 and 1.31 away from step 1's).
    assert loss == pytest.approx(ref_loss, rel=3e-2)
    assert len(bf16["grads"]) == 1 and _rel_err(bf16["grads"][0], ref["grads"][0]) < 0.5
    assert bf16["state"]["scaler"] == {}  # no GradScaler for bf16 (its state is empty when off)


class _LowScaleGradScaler(torch.amp.GradScaler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, init_scale=2.0**8, **kwargs)


def test_fp16_autocast_and_grad_scaler_on_cpu(tmp_path, monkeypatch):
    ref = _run(tmp_path / "fp32", monkeypatch, hooks=True)
    fp16 = _run(tmp_path / "fp16", monkeypatch, ["train.amp=fp16"], hooks=True)
    assert fp16["out_dtypes"] == {torch.float16} and fp16["loss_dtypes"] == {torch.float64}
    # Measured relative to float32 (seeds 0 / 1 / 2): loss 5.6e-5 / 3.1e-4 / 4.6e-4 (fp16:
    # 11 mantissa bits, rounding 4.9e-4 per value)
    (loss,), (ref_loss,) = fp16["losses"], ref["losses"]
    assert math.isfinite(loss) and loss != ref_loss
    assert loss == pytest.approx(ref_loss, rel=3e-3)
    # The GradScaler is on. With its default initial scale 2^16 the scaled gradients of this
    # first step overflow float16 (measured: seeds 0-2 all skip it): the optimiser step is
    # skipped, no weight changes, and the scale is halved. Either way, scale and weights agree.
    skipped = len(fp16["grads"]) == 0
    assert fp16["state"]["scaler"]["scale"] == 2.0**16 * (0.5 if skipped else 1.0)
    if skipped:
        assert all(torch.equal(u, torch.zeros_like(u)) for u in _update(fp16).values())
    else:
        assert _rel_err(fp16["grads"][0], ref["grads"][0]) < 0.15

    # With a scale that does not overflow, the step is taken on UNSCALED gradients: the SGD
    # update is the float32 run's within fp16 accuracy (measured, seeds 0 / 1 / 2: gradients and
    # update 2.5e-2 / 6.8e-2 / 1.8e-2 apart); gradients left scaled would be 256 times larger.
    monkeypatch.setattr(torch.amp, "GradScaler", _LowScaleGradScaler)
    low = _run(tmp_path / "fp16_low_scale", monkeypatch, ["train.amp=fp16"])
    assert low["state"]["scaler"]["scale"] == 2.0**8  # this scaler, no overflow, no back-off
    assert len(low["grads"]) == 1 and _rel_err(low["grads"][0], ref["grads"][0]) < 0.15
    assert _rel_err(_update(low), _update(ref)) < 0.15


# ----------------------------------------------------------------------------- train.channels_last


def test_channels_last_gives_the_contiguous_run_and_a_loadable_checkpoint(tmp_path, monkeypatch):
    # The trainer uses channels-last on CUDA only; forced here on the CPU, whose convolutions
    # support it too, it must change nothing but the order of float sums: model, momentum
    # target, inputs, optimiser state and checkpoint all go through the channels-last path.
    two = ["train.max_steps_per_epoch=2", "model.momentum_encoder=true"]
    layouts: list[tuple[bool, bool]] = []
    real_build = pretrain.build_online_model

    def spy_build(cfg, device, world=1, channels_last=False):
        model = real_build(cfg, device, world, channels_last)
        # a conv with several input channels (for one channel both layouts are the same);
        # the momentum target is a deep copy, so its forward is recorded too
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)

        def record(mod, args):
            fmt = torch.channels_last
            layouts.append((mod.weight.is_contiguous(memory_format=fmt),
                            args[0].is_contiguous(memory_format=fmt)))  # fmt: skip

        conv.register_forward_pre_hook(record)
        return model

    contiguous = _run(tmp_path / "contiguous", monkeypatch, two)
    with monkeypatch.context() as m:
        m.setattr(pretrain, "use_channels_last", lambda cfg, device: cfg.train.channels_last)
        m.setattr(pretrain, "build_online_model", spy_build)
        forced = _run(tmp_path / "channels_last", monkeypatch, two)
        n_forced = len(layouts)
        off = _run(tmp_path / "off", monkeypatch, [*two, "train.channels_last=false"])
    # the flag reached the weights and activations of every forward (online and target, both
    # views, both steps), and train.channels_last=false keeps the default layout
    assert n_forced >= 8 and layouts[:n_forced] == [(True, True)] * n_forced
    assert len(layouts) == 2 * n_forced and not any(w or x for w, x in layouts[n_forced:])
    assert len(forced["losses"]) == len(contiguous["losses"]) == 2
    assert forced["losses"] == pytest.approx(contiguous["losses"], rel=1e-5)
    for step in range(2):
        assert _rel_err(forced["grads"][step], contiguous["grads"][step]) < 1e-4, step
    got, want = forced["state"], contiguous["state"]
    for part in ("model", "ema"):
        assert got[part].keys() == want[part].keys()
    for key, value in want["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert off["losses"] == contiguous["losses"]
    # the channels-last checkpoint loads strictly into a fresh (contiguous) model and computes
    # what the contiguous run's checkpoint computes
    fresh = SSLModel(EncoderSpec.from_dict(got["encoder_spec"]))
    fresh.load_state_dict(got["model"])
    reference = SSLModel(EncoderSpec.from_dict(want["encoder_spec"]))
    reference.load_state_dict(want["model"])
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh.eval()(x)[0], reference.eval()(x)[0], rtol=1e-5, atol=1e-6)
