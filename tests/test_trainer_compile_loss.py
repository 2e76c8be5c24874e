"""``train.compile_loss``: the loss module under ``torch.compile`` (inductor's CPU backend here)
gives the eager run's losses, loss terms and loss state, so the option changes speed only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainers.config import ConfigError, load_config
from trainers.pretrain import preflight, train

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"

# EMI with the GPU recipe's loss (Taylor series, running warm-started scales: buffers updated
# inside the compiled forward, and a recompile when the warm start begins), 3 logged steps.
RUN = [
    "train.epochs=1",
    "train.max_steps_per_epoch=3",
    "train.log_every_steps=1",
    "train.progress=false",
    "train.tensorboard=false",
    "data.batch_size=64",
    "model.widths=[8,16,16]",
    "model.projector_dims=[16,8]",
    "eval.every_epochs=0",
    "loss.params={form: joint, logdet: taylor, order: 4, scale: running, covariance: batch,"
    " ridge: 0.0001, on_violation: clamp, running_warm_iters: 3}",
]


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "step"]


@pytest.mark.slow
def test_compiled_loss_gives_the_eager_run(tmp_path):
    for name, flag in (("eager", "false"), ("compiled", "true")):
        cfg = load_config(
            CONFIGS / "digits_emi.yaml",
            [*RUN, f"train.compile_loss={flag}", f"train.run_dir={tmp_path / name}"],
        )
        train(cfg)
    eager, compiled = _steps(tmp_path / "eager"), _steps(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [1, 2, 3]
    terms = ("loss", "mi", "logdet_c11", "logdet_c22", "logdet_joint")
    for a, b in zip(eager, compiled, strict=True):
        # the terms come from last_terms, written inside the compiled forward: they must be this
        # step's, not missing or stale
        assert b["mi"] == pytest.approx(-b["loss"], rel=1e-12)
        for key in terms:
            # float64 loss; inductor reorders float32 network arithmetic between steps
            assert b[key] == pytest.approx(a[key], rel=1e-4), (b["step"], key)
    assert eager[0]["loss"] != eager[-1]["loss"]  # the steps differ, so stale terms would show
    state = {
        name: torch.load(tmp_path / name / "last.pt", weights_only=True)["loss_state"]
        for name in ("eager", "compiled")
    }
    assert state["compiled"].keys() == state["eager"].keys()
    for key, value in state["eager"].items():
        if value.is_floating_point():
            torch.testing.assert_close(state["compiled"][key], value, rtol=1e-4, atol=1e-8)
        else:
            assert torch.equal(state["compiled"][key], value), key


def test_compile_loss_refuses_mec_lambda_warmup(tmp_path):
    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        [
            "loss.name=mec",
            "loss.params={}",
            "loss.mec_warmup_epochs=2",
            "train.compile_loss=true",
            f"train.run_dir={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match="compile_loss=true does not work with MEC"):
        preflight(cfg)
