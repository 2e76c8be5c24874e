"""The trainer's CUDA step has no host syncs outside the model, part by part (benchmarks.step_ops
counts them on the CPU; a host read in the loss, optimiser or EMA would stall the GPU's launch
queue on every step)."""

from __future__ import annotations

import pytest

from benchmarks.step_ops import step_ops


@pytest.mark.parametrize("case", ["cifar10_emi", "cifar10_mio", "cifar10_byol"])
def test_training_step_parts_never_read_the_device(case):
    rows = {r["part"]: r for r in step_ops(case, batch=4)}
    parts = [p for p in rows if not p.startswith("overhead")]
    assert "loss forward+backward" in parts and "optimiser step" in parts
    for part in parts:
        assert rows[part]["host_syncs"] == 0, (part, rows[part]["sync_ops"])
    # the counts are real: the model and the loss launch operators
    assert rows["ceiling: model forward+backward"]["launches"] > 100
    assert rows["loss forward+backward"]["launches"] > 10


def test_emi_recipe_loss_is_cheaper_than_its_cold_started_variant():
    warm = {r["part"]: r for r in step_ops("cifar10_emi", batch=4)}
    cold = {r["part"]: r for r in step_ops(
        "cifar10_emi", batch=4, extra=["loss.params.running_warm_iters=null"])}  # fmt: skip
    saved = cold["loss forward+backward"]["launches"] - warm["loss forward+backward"]["launches"]
    assert saved == 3 * (20 - 3) * 4  # as measured on the bare loss (test_losses_emi)
