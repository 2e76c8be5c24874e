"""Per-step and per-epoch schedules of the trainer, checked through ``pretrain.train``: the
momentum (EMA) target's cosine schedule, periodic checkpoints every ``train.checkpoint_every_epochs``
epochs, and the fp16 GradScaler's state across a resume.

The runs are the tiny digits EMI runs of tests/test_trainer_backends.py (SGD without warm-up,
exact log-det, CPU, deterministic), a few steps each.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_trainer import CONFIGS, _state, sigterm_at_loss_call
from test_trainer_backends import RUN, _cfg, _run

from mitools.models import MomentumEncoder
from trainers import pretrain

# ----------------------------------------------------------------------------- momentum target


def test_momentum_target_follows_the_cosine_schedule(tmp_path, monkeypatch):
    """BYOL's schedule, written out here: the update after global step k (0-based, k = 0..K-1,
    K = epochs x steps per epoch) uses m_k = final - (final - base) (cos(pi k / K) + 1) / 2, so
    the first update uses ``model.momentum_base`` exactly (mitools.models.cosine_momentum: base
    at k = 0, final at k = K). base/final are not the defaults, so a schedule that ignored either
    key, or stood still at base, would show. The target's weights after the run are then
    recomputed from the online weights the trainer handed to each update."""
    base, final = 0.9, 0.99
    epochs, per_epoch = 2, 3
    total = epochs * per_epoch
    seen: list[tuple[float, dict[str, torch.Tensor]]] = []
    before_first: dict[str, torch.Tensor] = {}
    real_update = MomentumEncoder.update

    def spy_update(self, online, momentum):
        if not seen:
            before_first.update({n: p.detach().clone() for n, p in self.named_parameters()})
        online_params = {
            n: p.detach().clone()
            for n, p in online.named_parameters()
            if n.startswith(("backbone.", "projector."))
        }
        seen.append((momentum, online_params))
        return real_update(self, online, momentum)

    monkeypatch.setattr(MomentumEncoder, "update", spy_update)
    run = _run(
        tmp_path / "ema",
        monkeypatch,
        [f"train.epochs={epochs}", f"train.max_steps_per_epoch={per_epoch}",
         "model.momentum_encoder=true", f"model.momentum_base={base}",
         f"model.momentum_final={final}"],
    )  # fmt: skip

    def closed_form(k: int) -> float:
        return final - (final - base) * (math.cos(math.pi * k / total) + 1) / 2

    # one update per optimiser step, with the scheduled momentum of that step
    assert len(run["losses"]) == len(run["grads"]) == total  # no step skipped or repeated
    momenta = [m for m, _ in seen]
    assert momenta == pytest.approx([closed_form(k) for k in range(total)], rel=0, abs=1e-12)
    assert momenta[0] == base and momenta[-1] < final  # increasing, final only after step K
    assert all(a < b for a, b in zip(momenta, momenta[1:], strict=False))

    # The target starts as a copy of the online model's initial weights, and each update is
    # t <- m t + (1 - m) o with o the online weights AFTER that step's optimiser update (the last
    # o is the checkpointed model). Recomputed in float64; the trainer lerps in float32.
    assert before_first.keys() == seen[0][1].keys()
    for name, value in before_first.items():
        assert torch.equal(value, run["init"][name]), name
    state = run["state"]
    for name, value in seen[-1][1].items():
        assert torch.equal(value, state["model"][name]), name
    ema = {n: v.double() for n, v in before_first.items()}
    for m, online in seen:
        ema = {n: m * t + (1 - m) * online[n].double() for n, t in ema.items()}
    moved = 0.0
    for name, value in ema.items():
        got = state["ema"][name]
        torch.testing.assert_close(
            got.double(), value, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
        moved = max(moved, float((got - before_first[name]).abs().max()))
    assert moved > 1e-3  # the target did move: the recomputation is not vacuous


# ----------------------------------------------------------------------------- periodic checkpoints


@pytest.mark.parametrize("every", [0, 2, 3])
def test_checkpoint_every_k_epochs_writes_those_epochs_only(tmp_path, monkeypatch, every):
    """5 epochs x 2 steps, ``train.checkpoint_every_epochs=K``: ``epoch_XXXX.pt`` for the epochs
    that K divides (none for K = 0), each holding that epoch (its number, its step count, no
    batch of the next epoch) and that epoch's weights, read with a spy at each epoch's end;
    ``last.pt`` always holds the final epoch. Nothing else is left in the folder."""
    epochs, per_epoch = 5, 2
    run_dir = tmp_path / f"every_{every}"
    at_epoch_end: list[dict[str, torch.Tensor]] = []
    real_log = pretrain._Metrics.log
    model_ref: dict = {}
    real_build = pretrain.build_online_model

    def spy_build(*args, **kwargs):
        model_ref["model"] = real_build(*args, **kwargs)
        return model_ref["model"]

    def spy_log(self, record, step):
        if record["kind"] == "epoch":  # logged after the epoch's checkpoints
            sd = model_ref["model"].state_dict()
            at_epoch_end.append({k: v.detach().clone() for k, v in sd.items()})
        return real_log(self, record, step)

    monkeypatch.setattr(pretrain, "build_online_model", spy_build)
    monkeypatch.setattr(pretrain._Metrics, "log", spy_log)
    extra = [f"train.epochs={epochs}", f"train.max_steps_per_epoch={per_epoch}",
             f"train.checkpoint_every_epochs={every}", "train.log_every_steps=0"]  # fmt: skip
    summary = pretrain.train(_cfg(run_dir, extra))
    assert (summary["epoch"], summary["step"]) == (epochs, epochs * per_epoch)
    assert len(at_epoch_end) == epochs

    periodic = [e for e in range(1, epochs + 1) if every > 0 and e % every == 0]
    expected = {f"epoch_{e:04d}.pt" for e in periodic} | {"last.pt"}
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        expected | {"config.yaml", "metrics.jsonl"}
    )
    for name, e in [*((f"epoch_{e:04d}.pt", e) for e in periodic), ("last.pt", epochs)]:
        st = _state(run_dir / name)
        assert (st["epoch"], st["step"], st["batch_in_epoch"]) == (e, e * per_epoch, 0), name
        weights = at_epoch_end[e - 1]
        assert st["model"].keys() == weights.keys()
        for k, v in weights.items():
            assert torch.equal(st["model"][k], v), f"{name}: {k}"
    # each epoch's weights differ from the previous one's: the comparison tells epochs apart
    for before, after in zip(at_epoch_end, at_epoch_end[1:], strict=False):
        assert any(not torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- fp16 GradScaler


class _GrowingGradScaler(torch.amp.GradScaler):
    """No overflow at 2^8 on this run's first step (tests/test_trainer_backends.py), and the
    scale doubles after every 2 steps without an overflow: it changes within each epoch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, init_scale=2.0**8, growth_interval=2, **kwargs)


def _scaled_run_state(path: Path) -> dict:
    st = _state(path)
    return {"model": st["model"], "momentum_buffers": st["optimizer"]["state"],
            "scaler": st["scaler"], "position": (st["epoch"], st["step"])}  # fmt: skip


def _assert_same_run(got: dict, want: dict) -> None:
    assert got["position"] == want["position"]
    assert got["scaler"] == want["scaler"]  # scale, growth tracker and the scaler's settings
    assert got["model"].keys() == want["model"].keys()
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k], v), k
    assert got["momentum_buffers"].keys() == want["momentum_buffers"].keys()
    for i, buffers in want["momentum_buffers"].items():
        for k, v in buffers.items():
            assert torch.equal(got["momentum_buffers"][i][k], v), (i, k)


def test_fp16_grad_scaler_state_survives_a_resume(tmp_path, monkeypatch):
    """fp16 on the CPU, 3 epochs x 3 steps: killed after epoch 1 (only epoch_0001.pt left, resumed
    with the CLI's ``--resume auto``) or by SIGTERM mid epoch 2 (``resume="auto"``), the run ends
    with the uninterrupted run's weights, SGD momentum buffers and GradScaler state. The scale
    at each checkpoint differs from a fresh scaler's, so a resume that started a new scaler
    would end with another scale."""
    monkeypatch.setattr(torch.amp, "GradScaler", _GrowingGradScaler)
    extra = ["train.epochs=3", "train.max_steps_per_epoch=3", "train.amp=fp16",
             "train.checkpoint_every_epochs=1", "train.log_every_steps=1"]  # fmt: skip
    ref = tmp_path / "ref"
    summary = pretrain.train(_cfg(ref, extra))
    assert (summary["epoch"], summary["step"]) == (3, 9) and not summary["interrupted"]
    want = _scaled_run_state(ref / "last.pt")
    fresh = _GrowingGradScaler("cpu").state_dict()
    after_1 = _state(ref / "epoch_0001.pt")["scaler"]
    # not vacuous: the scale moved before the first checkpoint and again after it
    assert (after_1["scale"], after_1["_growth_tracker"]) != (fresh["scale"], 0)
    assert want["scaler"]["scale"] != after_1["scale"]
    assert want["scaler"]["growth_interval"] == 2  # this scaler's, not the default 2000

    # (a) killed after epoch 1: resume from the epoch checkpoint through the CLI
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "epoch_0001.pt").write_bytes((ref / "epoch_0001.pt").read_bytes())
    sets = sum((["--set", s] for s in [*RUN, *extra, f"train.run_dir={cut}"]), [])
    args = ["--config", str(CONFIGS / "digits_emi.yaml"), "--resume", "auto", *sets]
    assert pretrain.main(args) == 0
    _assert_same_run(_scaled_run_state(cut / "last.pt"), want)

    # (b) SIGTERM after step 5 (mid epoch 2): last.pt written there, then resumed
    sig = tmp_path / "sig"
    with monkeypatch.context() as m:
        m.setattr(pretrain, "ssl_loss", sigterm_at_loss_call(5))
        s1 = pretrain.train(_cfg(sig, extra))
    assert s1["interrupted"] and s1["step"] == 5
    mid = _state(sig / "last.pt")
    assert (mid["epoch"], mid["step"], mid["batch_in_epoch"]) == (1, 5, 2)
    assert mid["scaler"]["scale"] != fresh["scale"]
    s2 = pretrain.train(_cfg(sig, extra), resume="auto")
    assert s2["step"] == 9 and not s2["interrupted"]
    _assert_same_run(_scaled_run_state(sig / "last.pt"), want)
