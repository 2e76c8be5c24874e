"""benchmarks.train_throughput: its fake datasets load through the real loaders, and its table's
numbers are what it measured (ratio = pipeline / ceiling, the pipeline's rate = the trainer's
second-epoch rate). Timings themselves are not tested (benchmarks print them)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks import train_throughput as tt
from mitools.data.datasets import IMAGENET100_CLASSES, build_dataset


def test_fake_cifar10_loads_through_the_cifar_loader(tmp_path):
    tt.write_fake_cifar10(tmp_path, n_train=52, n_test=7)
    train = build_dataset("cifar10", tmp_path, "train")
    test = build_dataset("cifar10", tmp_path, "test")
    assert (len(train), len(test)) == (5 * 11, 7)  # ceil(52 / 5) per batch file
    image, label = train[0]
    assert (image.size, image.mode) == ((32, 32), "RGB") and 0 <= int(label) < 10


def test_fake_imagenet100_is_a_complete_imagefolder_tree(tmp_path):
    tt.write_fake_imagenet100(tmp_path, n_train=200, n_val=100, distinct=3)
    train = build_dataset("imagenet100", tmp_path, "train")
    val = build_dataset("imagenet100", tmp_path, "val")
    assert (len(train), len(val)) == (200, 100)  # 2 and 1 per class of the 100
    assert len(IMAGENET100_CLASSES) == 100
    assert {int(train[i][1]) for i in range(0, 200, 2)} == set(range(100))
    assert train[0][0].size == (500, 375)  # PIL (width, height) before any transform


def test_table_holds_what_was_measured(tmp_path, monkeypatch):
    seen = {}
    real_ceiling, real_pipeline = tt.ceiling, tt.pipeline

    def spy_ceiling(cfg, device, steps, with_target=True):
        seen["with_target"] = with_target
        seen.setdefault("ceiling", []).append(real_ceiling(cfg, device, steps, with_target))
        return seen["ceiling"][-1]

    def spy_pipeline(cfg, device):
        seen.setdefault("pipeline", []).append(real_pipeline(cfg, device))
        seen["cfg"] = cfg
        return seen["pipeline"][-1]

    monkeypatch.setattr(tt, "ceiling", spy_ceiling)
    monkeypatch.setattr(tt, "pipeline", spy_pipeline)
    df = tt.run(
        quick=True, out=tmp_path, cases=["digits_mio"], steps=2, batch=16, device="cpu",
        extra=["model.momentum_encoder=true"], repeats=2,
    )  # fmt: skip
    assert len(df) == 2 and list(df["repeat"]) == [0, 1]
    for row, (a_ips, _), (b_ips, _) in zip(
        df.itertuples(), seen["ceiling"], seen["pipeline"], strict=True
    ):
        assert (row.ceiling_img_s, row.pipeline_img_s) == (a_ips, b_ips)
        assert math.isfinite(b_ips) and b_ips > 0 and a_ips > 0
        assert row.ratio == pytest.approx(b_ips / a_ips, rel=1e-12)
    # the run was the requested one: the config's overrides reached the trainer
    cfg = seen["cfg"]
    assert (cfg.data.batch_size, cfg.train.max_steps_per_epoch, cfg.train.epochs) == (16, 2, 2)
    assert seen["with_target"] and df["ceiling_includes_target"].all()
    saved = pd.read_csv(tmp_path / "train_throughput.csv")
    assert list(saved["ratio"]) == pytest.approx(list(df["ratio"]), rel=1e-12)
