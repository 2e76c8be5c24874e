"""Tests of trainers/: config errors, resume exactness, checkpoint contents, non-finite stop,
kNN / linear probe against brute force, and the digits check that SSL beats random init."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mitools.data.datasets import get_spec
from trainers import pretrain
from trainers.config import ConfigError, load_config
from trainers.linear_eval import (
    knn_predict,
    linear_probe,
    load_backbone,
    subsample_per_class,
)
from trainers.pretrain import NonFiniteLossError, preflight, train

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
REPO = CONFIGS.parents[1]

# A tiny deterministic digits run: 3 epochs x 3 steps of 64 images, small CNN, EMI with every
# kind of state (EMA covariance, running Taylor scales, momentum encoder) so resume must restore
# all of them.
TINY = [
    "train.epochs=3",
    "train.max_steps_per_epoch=3",
    "train.deterministic=true",
    "train.log_every_steps=2",
    "train.checkpoint_every_epochs=1",
    "train.progress=false",
    "data.batch_size=64",
    "model.widths=[8,16,16]",
    "model.projector_dims=[16,8]",
    "model.momentum_encoder=true",
    "eval.every_epochs=0",
    "loss.params={logdet: taylor, order: 4, scale: running, covariance: ema, ridge: 0.0001,"
    " on_violation: clamp}",
]


def tiny_cfg(run_dir: Path, extra: list[str] | None = None):
    return load_config(
        CONFIGS / "digits_emi.yaml", [*TINY, f"train.run_dir={run_dir}", *(extra or [])]
    )


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- config errors


def test_unknown_key_suggests_nearest(tmp_path, capsys):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.weight_decy'.*'optim.weight_decay'"
    ):
        load_config(None, ["optim.weight_decy=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [" + str(CONFIGS / "digits_emi.yaml") + "]\ntrian: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config(bad)
    # loss params are checked against the loss's signature
    cfg = load_config(CONFIGS / "digits_emi.yaml", ["loss.params.ordr=3"])
    with pytest.raises(ConfigError, match=r"loss.params.ordr.*'loss.params.order'"):
        pretrain.build_loss_from_config(cfg)
    # nothing near: the accepted keys are listed (the trainer's own gather_distributed is not)
    cfg = load_config(CONFIGS / "digits_emi.yaml", ["loss.params.foo=3"])
    with pytest.raises(
        ConfigError, match=r"loss.params.foo' for loss 'emi'; it accepts center, "
    ) as e:
        pretrain.build_loss_from_config(cfg)
    assert "ridge" in str(e.value) and "gather_distributed" not in str(e.value)
    # the CLI prints ONE line and exits 2
    assert pretrain.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'train'" in err[0]


def test_wrong_type_is_one_line_error():
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 'abc'"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected float, got \[1\]"):
        load_config(None, ["optim.lr=[1]"])
    with pytest.raises(ConfigError, match=r"model.widths\[1\]: expected int"):
        load_config(None, ["model.widths=[8, x]"])


def test_override_types_parsed():
    cfg = load_config(
        None,
        ["model.widths=[8,16]", "model.predictor_dims=null", "optim.lr=1", "train.run_dir=123",
         "data.download=true", "loss.params.order=6"],
    )  # fmt: skip
    assert cfg.model.widths == [8, 16] and cfg.model.predictor_dims is None
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.train.run_dir == "123" and cfg.data.download is True
    assert cfg.loss.params == {"order": 6}


def test_missing_dataset_and_unwritable_folder_fail_before_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config(
        CONFIGS / "cifar10_mio.yaml",
        [f"data.root={tmp_path / 'nowhere'}", f"train.run_dir={run_dir}"],
    )
    with pytest.raises(ConfigError, match=r"dataset 'cifar10' not usable: .*missing"):
        preflight(cfg)
    assert not run_dir.exists()  # nothing written before the error
    args = ["--config", str(CONFIGS / "cifar10_mio.yaml"), "--set", f"data.root={tmp_path}"]
    assert pretrain.main(args) == 2
    assert "cifar10" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = load_config(CONFIGS / "digits_emi.yaml", [f"train.run_dir={blocker / 'run'}"])
    with pytest.raises(ConfigError, match=r"cannot create the folder \(.*a_file is not a folder\)"):
        preflight(cfg)


def test_all_shipped_configs_load_and_build_their_loss():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "base.yaml")
    datasets = ("cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet100")
    methods = ("emi", "mio", "simclr", "barlow_twins", "vicreg", "byol", "corinfomax", "mec")
    for ds in (*datasets, "digits"):
        for m in methods:
            assert f"{ds}_{m}.yaml" in names
    for name in names:
        cfg = load_config(CONFIGS / name)
        pretrain.build_loss_from_config(cfg)
    for ds in datasets:
        # MIO: the paper's setting (ResNet-18, 200 epochs) and the reference code's (ResNet-50,
        # 1000 epochs, the CIFAR stem at 32 px only), both with the reference recipe
        ref = load_config(CONFIGS / f"{ds}_mio_reference.yaml")
        paper = load_config(CONFIGS / f"{ds}_mio.yaml")
        assert (ref.model.arch, ref.train.epochs) == ("resnet50", 1000), ds
        assert ref.model.cifar_stem == (get_spec(ds).image_size == 32), ds
        assert (paper.model.arch, paper.train.epochs) == ("resnet18", 200), ds
        for cfg in (ref, paper):
            assert cfg.model.projector_dims == [2048, 128] and cfg.model.projector_last_bn, ds
            assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling) == (
                "lars", 1.5, 128, "none",
            ), ds  # fmt: skip
            assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.warmup_epochs) == (
                0.9, 1e-6, 10,
            ), ds  # fmt: skip
            assert cfg.loss.params == {"tau_p": 0.5, "tau_n": 0.5, "lam": 0.0}, ds
        # EMI: momentum encoder, projector size and Taylor order are explicit, overridable keys
        emi = load_config(CONFIGS / f"{ds}_emi.yaml")
        assert emi.model.momentum_encoder and emi.model.projector_dims == [2048, 128], ds
        assert (emi.loss.params["logdet"], emi.loss.params["order"]) == ("taylor", 4), ds
        changed = load_config(
            CONFIGS / f"{ds}_emi.yaml",
            ["model.momentum_encoder=false", "model.projector_dims=[512,64]",
             "loss.params.order=6"],
        )  # fmt: skip
        assert not changed.model.momentum_encoder and changed.model.projector_dims == [512, 64]
        assert pretrain.build_loss_from_config(changed).order == 6


def test_digits_baselines_are_digits_emi_with_the_loss_swapped_and_train(tmp_path):
    from trainers.config import config_to_dict

    for name in ("simclr", "vicreg", "barlow_twins", "corinfomax", "mec"):
        swapped = load_config(CONFIGS / "digits_emi.yaml", [f"loss.name={name}", "loss.params={}"])
        assert config_to_dict(load_config(CONFIGS / f"digits_{name}.yaml")) == config_to_dict(
            swapped
        ), name
    for name in ("simclr", "vicreg", "barlow_twins", "byol", "corinfomax", "mec"):
        cfg = load_config(
            CONFIGS / f"digits_{name}.yaml",
            ["train.epochs=1", "train.max_steps_per_epoch=2", "train.progress=false",
             "train.tensorboard=false", "eval.every_epochs=0", f"train.run_dir={tmp_path / name}"],
        )  # fmt: skip
        summary = train(cfg)
        loss = summary["epoch_metrics"][-1]["mean_loss"]
        assert np.isfinite(loss), (name, loss)


# ----------------------------------------------------------------------------- kNN and probe


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    tr_x, te_x = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    tr_y = torch.randint(0, 4, (60,), generator=g)
    k, temp = 7, 0.1
    got = knn_predict(tr_x, tr_y, te_x, k=k, temperature=temp, chunk=10)
    a = tr_x.numpy() / np.linalg.norm(tr_x.numpy(), axis=1, keepdims=True)
    for i, q in enumerate(te_x.numpy()):
        s = a @ (q / np.linalg.norm(q))
        nn_idx = np.argsort(-s)[:k]
        votes = np.zeros(4)
        for j in nn_idx:
            votes[tr_y[j]] += np.exp(s[j] / temp)
        assert got[i] == votes.argmax()


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 10, generator=g) * 5
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 10, generator=g)
    assert linear_probe(x[:150], y[:150], x[150:], y[150:]) == 100.0
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], solver="sgd", steps=20) == 100.0
    noise = torch.randn(300, 10, generator=g)  # labels independent of features: ~chance
    assert linear_probe(noise[:150], y[:150], noise[150:], y[150:]) < 55.0


def test_subsample_per_class():
    y = np.repeat(np.arange(4), 7)
    idx = subsample_per_class(y, 3, seed=0)
    assert np.bincount(y[idx]).tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="fewer than 8"):
        subsample_per_class(y, 8)


# ----------------------------------------------------------------------------- checkpoints


def sigterm_at_loss_call(n: int):
    """A stand-in for ``pretrain.ssl_loss`` that raises SIGTERM in the trainer's (main) thread
    at its ``n``-th call, handled before it returns: the run stops after that step."""
    calls = {"n": 0}
    real = pretrain.ssl_loss

    def loss_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    return loss_then_signal


def _final_model(path: Path) -> dict:
    st = _state(path)
    return {"model": st["model"], "ema": st["ema"], "loss_state": st["loss_state"]}


def _assert_same(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


def test_resume_is_exact_after_epoch_and_after_sigterm(tmp_path, monkeypatch):
    # Uninterrupted reference run.
    ref = tmp_path / "ref"
    summary = train(tiny_cfg(ref))
    assert summary["epoch"] == 3 and summary["step"] == 9 and not summary["interrupted"]
    final = _final_model(ref / "last.pt")

    # (a) killed after epoch 1: only epoch_0001.pt survives; --resume auto continues from it.
    # The killed run had logged past its checkpoint (here: all of the reference's records and a
    # line cut by the kill): the resumed log must hold each step once, as the reference's.
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "epoch_0001.pt").write_bytes((ref / "epoch_0001.pt").read_bytes())
    (cut / "metrics.jsonl").write_text((ref / "metrics.jsonl").read_text() + '{"kind": "st')
    assert pretrain.main(["--config", str(CONFIGS / "digits_emi.yaml"), "--resume", "auto",
                          *sum((["--set", s] for s in [*TINY, f"train.run_dir={cut}"]), [])]) == 0  # fmt: skip
    _assert_same(final, _final_model(cut / "last.pt"))
    drop = {"images_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in pretrain.read_metrics(cut)] == [
        {k: v for k, v in r.items() if k not in drop} for r in pretrain.read_metrics(ref)
    ]

    # (b) SIGTERM in the middle of epoch 2 (after step 5): checkpoint written, then resumed.
    sig = tmp_path / "sig"
    real = pretrain.ssl_loss
    monkeypatch.setattr(pretrain, "ssl_loss", sigterm_at_loss_call(5))
    s1 = train(tiny_cfg(sig))
    assert s1["interrupted"] and s1["step"] == 5
    st = _state(sig / "last.pt")
    assert (st["epoch"], st["step"], st["batch_in_epoch"]) == (1, 5, 2)
    monkeypatch.setattr(pretrain, "ssl_loss", real)
    s2 = train(tiny_cfg(sig), resume="auto")
    assert s2["step"] == 9 and not s2["interrupted"]
    _assert_same(final, _final_model(sig / "last.pt"))

    # Checkpoint contents: everything needed to resume, loadable with weights_only, and an
    # encoder spec from which linear_eval rebuilds the backbone without the config file.
    st = _state(ref / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "loss_state", "rng",
                "epoch", "step", "config", "encoder_spec"):  # fmt: skip
        assert key in st, key
    assert st["loss_state"]["ema_cov"].shape == (16, 16)
    backbone, _ = load_backbone(ref / "last.pt")
    assert sum(p.numel() for p in backbone.parameters()) > 0
    lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]
    assert all("mi" in r and "loss" in r for r in lines if r["kind"] == "step")
    assert (ref / "config.yaml").is_file()


def test_online_monitoring_does_not_change_training(tmp_path):
    # The evaluation's loaders draw from the global RNG that the augmentations use; evaluating
    # every epoch must still give the weights of a run that never evaluates.
    train(tiny_cfg(tmp_path / "quiet", ["eval.every_epochs=0"]))
    train(tiny_cfg(tmp_path / "monitored", ["eval.every_epochs=1", "eval.max_samples=200"]))
    _assert_same(_final_model(tmp_path / "quiet" / "last.pt"),
                 _final_model(tmp_path / "monitored" / "last.pt"))  # fmt: skip
    lines = (tmp_path / "monitored" / "metrics.jsonl").read_text().splitlines()
    assert sum('"knn_top1"' in line for line in lines) == 3  # it did evaluate every epoch

    # The logged spectrum statistics are those of the checkpointed model: recompute them from
    # last.pt on the same 200 validation digits with mitools.spectrum (tested on closed forms).
    from mitools.data.augment import eval_transform
    from mitools.data.datasets import build_dataset
    from mitools.models import build_encoder_from_checkpoint_dict
    from mitools.spectrum import effective_rank, normalized_std
    from trainers.linear_eval import extract_features

    last = [json.loads(x) for x in lines if '"kind": "epoch"' in x][-1]
    st = _state(tmp_path / "monitored" / "last.pt")
    model = build_encoder_from_checkpoint_dict(st["encoder_spec"], st["model"])
    val = build_dataset("digits", None, "val", transform=eval_transform("digits"))
    feats, _ = extract_features(model.backbone, val, max_samples=200)
    with torch.no_grad():
        z = model.projector(feats)
    assert last["feat_effective_rank"] == pytest.approx(effective_rank(feats), rel=1e-5)
    assert last["proj_effective_rank"] == pytest.approx(effective_rank(z), rel=1e-5)
    assert last["proj_normalized_std"] == pytest.approx(normalized_std(z), rel=1e-5)
    assert last["proj_normalized_std_healthy"] == pytest.approx(z.shape[1] ** -0.5)
    assert 0 <= last["knn_top1"] <= 100 and 0 <= last["probe_top1"] <= 100


def test_device_resident_data_gives_the_same_run(tmp_path):
    # data.on_device indexes batches from one tensor instead of a DataLoader: same batches in the
    # same order, so the same weights (CPU, deterministic).
    train(tiny_cfg(tmp_path / "loader", ["data.on_device=false"]))
    train(tiny_cfg(tmp_path / "resident", ["data.on_device=true"]))
    _assert_same(_final_model(tmp_path / "loader" / "last.pt"),
                 _final_model(tmp_path / "resident" / "last.pt"))  # fmt: skip


def test_resident_loader_yields_the_sampler_batches():
    from trainers.pretrain import DeviceResidentLoader, EpochBatchSampler

    images = torch.arange(50.0).view(50, 1, 1, 1)
    for start in (0, 2):
        sampler = EpochBatchSampler(50, 8, seed=3, rank=1, world=2)
        sampler.set_epoch(4, start_batch=start)
        expected = list(sampler)
        got = [x.view(-1).long().tolist() for x, _ in DeviceResidentLoader(images, sampler)]
        assert got == expected and len(got) == 3 - start


def test_on_device_and_graph_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.on_device=true needs data.augment=batch"):
        preflight(tiny_cfg(tmp_path / "a", ["data.on_device=true", "data.augment=workers"]))
    with pytest.raises(ConfigError, match="data.augment_graph=true needs CUDA"):
        preflight(tiny_cfg(tmp_path / "b", ["data.augment_graph=true", "train.device=cpu"]))


def test_train_gives_the_callers_torch_settings_back(tmp_path, monkeypatch):
    # train.deterministic switches torch's deterministic algorithms on for the run only; after a
    # return or an exception the caller's setting holds (it once stayed on for the whole process).
    assert not torch.are_deterministic_algorithms_enabled()
    seen = []
    real = pretrain.ssl_loss

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain, "ssl_loss", spy)
    train(tiny_cfg(tmp_path / "ok", ["train.epochs=1"]))
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pretrain, "ssl_loss", fail)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_cfg(tmp_path / "raises"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_deferred_read_back_logs_the_same_metrics(tmp_path):
    train(tiny_cfg(tmp_path / "every", ["train.check_every_steps=1"]))
    train(tiny_cfg(tmp_path / "deferred", ["train.check_every_steps=5"]))
    a, b = (pretrain.read_metrics(tmp_path / n) for n in ("every", "deferred"))
    drop = {"images_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]
    assert len([r for r in a if r["kind"] == "step"]) == 4  # steps 2, 4, 6, 8 of 9


@pytest.mark.parametrize("check_every", [1, 4], ids=["every-step", "deferred"])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, check_every):
    # Reading the loss back every 4 steps (the CUDA default is 50) must report the same step as
    # reading it every step, and must not write a checkpoint past it.
    run = tmp_path / "nan"
    calls = {"n": 0}
    real = pretrain.ssl_loss

    def nan_at_step_5(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(pretrain, "ssl_loss", nan_at_step_5)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, step 4.*last.pt"
    ):
        train(tiny_cfg(run, [f"train.check_every_steps={check_every}", "train.log_every_steps=0"]))
    st = _state(run / "last.pt")
    assert (st["epoch"], st["step"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("where", ["last step of epoch 2", "mid epoch 2"])
def test_non_finite_gradient_with_finite_loss_never_reaches_a_checkpoint(
    tmp_path, monkeypatch, where
):
    """A NaN gradient under a finite loss poisons only the weights, which the loss check cannot
    see: the epoch checkpoint (or the next step's failure) must stop the run with the one-line
    non-finite message and keep the last good checkpoint, never write NaN weights."""
    run = tmp_path / "nangrad"
    calls = {"n": 0}
    real = pretrain.ssl_loss
    at = 6 if where == "last step of epoch 2" else 4  # 3 steps per epoch

    def nan_gradient_at(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] == at:
            loss.register_hook(lambda grad: grad * float("nan"))  # finite value, NaN gradient
        return loss

    monkeypatch.setattr(pretrain, "ssl_loss", nan_gradient_at)
    # at an epoch end the checkpoint's weight check stops it; mid-epoch the next step's loss
    # (computed from the NaN weights) is non-finite first
    named = r"weights \(.*\) found after step 6" if at == 6 else r"loss \(nan\) at epoch 2"
    with pytest.raises(NonFiniteLossError, match=rf"non-finite {named}.*last.pt"):
        train(tiny_cfg(run))
    st = _state(run / "last.pt")
    assert (st["epoch"], st["step"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    assert not (run / "epoch_0002.pt").exists()


def test_non_finite_weights_message_names_the_likely_cause(tmp_path):
    # a huge learning rate can leave every parameter finite yet overflow the activations, so
    # only BatchNorm's running statistics go non-finite: not "a non-finite gradient"
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    message = pretrain._non_finite_weights_message

    only_buffers = message(["1.running_var"], 7, tmp_path, model)
    assert "after step 7 (activations overflowed in the forward" in only_buffers
    assert "gradient" not in only_buffers and "none written yet" in only_buffers
    for bad in (["0.weight"], ["0.weight", "1.running_mean"], ["on another rank"]):
        assert "(a non-finite gradient with a finite loss)" in message(bad, 7, tmp_path, model)


def test_logged_learning_rate_follows_warmup_then_cosine(tmp_path):
    """The trainer's per-step lr against the closed form, written out here: linear warm-up from
    start to base over W steps, then half-cosine to final at the last step T; base scaled by the
    global batch (linear rule: lr * B / 256). Each step record logs the rate that step used."""
    extra = ["train.log_every_steps=1", "optim.warmup_epochs=1", "optim.lr_scaling=linear",
             "optim.warmup_start_ratio=0.1", "optim.final_lr_ratio=0.01"]  # fmt: skip
    cfg = tiny_cfg(tmp_path / "lr", extra)
    train(cfg)
    base = cfg.optim.lr * cfg.data.batch_size / 256
    start, final = 0.1 * base, 0.01 * base
    warm, total = 3, 9  # 3 steps per epoch, 3 epochs

    def closed_form(s: int) -> float:
        if s < warm:
            return start + (base - start) * s / warm
        return final + (base - final) * (1 + math.cos(math.pi * (s - warm) / (total - warm))) / 2

    rows = pretrain.read_metrics(tmp_path / "lr", "step")
    assert [r["step"] for r in rows] == list(range(1, 10))
    for r in rows:
        assert r["lr"] == pytest.approx(closed_form(r["step"] - 1), rel=1e-12), r["step"]
    assert rows[0]["lr"] == pytest.approx(start) and rows[3]["lr"] == pytest.approx(base)


# ----------------------------------------------------------------------------- SSL helps

# Probe protocol of the check: frozen backbone, 10 labels per class from the digits train split,
# standardised features + L-BFGS logistic regression (trainers.linear_eval), top-1 on the val
# split (359 images), averaged over the 5 label subsets of analysis.digits_ssl.probe_few_labels.
# The random baseline is the run's own initial encoder (digits_ssl.random_init_backbone).
# Standardising matters: without it a random encoder's eval-mode BN (running stats 1/0 at init) gives tiny features and a constant loss
# "improves" the probe by ~20 points just by recalibrating BN statistics.
# The runs are the digits configs as shipped (60 epochs, batch 128: 660 steps). The gain varies
# with the seed by about +-1.5 points (seed 1 draws other augmentations and batch orders), so the
# check is on the mean over SEEDS, with a floor per seed. Measured on the CPU (mean over the 5
# label subsets; random init / EMI / MIO): seed 0 89.5 / 95.9 (+6.5) / 95.7 (+6.2), seed 1
# 90.0 / 95.1 (+5.1) / 93.9 (+4.0), seed 2 87.6 / 95.0 (+7.4) / 95.0 (+7.4); means EMI +6.3,
# MIO +5.9. Raw pixels give 88.0 %. Over seeds 0-4 (python -m analysis.seed_gain): EMI +6.2 (every
# seed >= +5.1), MIO +5.6 (seed 1 +4.0); at 30 epochs, as the configs shipped before 2026-11-23,
# EMI +5.3 and MIO +4.9 (seeds 0-2 alone: +5.4 / +5.3, which this check had passed on).
MARGIN = 5.0  # points, as the issue asks: mean gain over SEEDS
SEEDS = (0, 1, 2)
FLOOR = 3.0  # points: every single seed must still help clearly


def _ssl_gain(config: str, run_dir: Path, extra: list[str] | None = None) -> tuple[float, float]:
    from analysis.digits_ssl import few_label_probe_pair

    cfg = load_config(
        CONFIGS / config,
        ["eval.every_epochs=0", "train.log_every_steps=0",
         "train.progress=false", "train.checkpoint_every_epochs=0", f"train.run_dir={run_dir}",
         *(extra or [])],
    )  # fmt: skip
    train(cfg)
    return few_label_probe_pair(run_dir / "last.pt")  # vs the run's own initial weights


@pytest.mark.slow
@pytest.mark.parametrize("config", ["digits_emi.yaml", "digits_mio.yaml"], ids=["emi", "mio"])
def test_ssl_beats_random_init_on_digits(tmp_path, config):
    gains = []
    for seed in SEEDS:
        base, after = _ssl_gain(config, tmp_path / f"s{seed}", [f"train.seed={seed}"])
        print(f"{config} seed {seed}: random {base:.2f} -> trained {after:.2f}")
        gains.append(after - base)
    assert np.mean(gains) >= MARGIN and min(gains) >= FLOOR, gains


@pytest.mark.slow
def test_constant_loss_does_not_beat_random_init(tmp_path):
    # the control: the same check fails when the loss is a constant (nothing is learned)
    base, after = _ssl_gain(
        "digits_emi.yaml", tmp_path / "run", ["loss.name=constant", "loss.params={}"]
    )
    assert after - base < FLOOR, (base, after)


def test_linear_eval_cli_writes_json(tmp_path, capsys):
    from trainers import linear_eval

    run = tmp_path / "run"
    train(tiny_cfg(run, ["train.epochs=1", "train.max_steps_per_epoch=1"]))
    out = tmp_path / "probe.json"
    assert linear_eval.main(["--checkpoint", str(run / "last.pt"), "--protocol", "cached",
                             "--labels-per-class", "10", "--knn-k", "20",
                             "--out", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["data"] == "digits" and res["labels_per_class"] == 10
    assert res["n_train"] == 100 and res["n_eval"] == 359 and res["knn_k"] == 20
    assert 10.0 < res["linear_top1"] <= 100.0 and 10.0 < res["knn_top1"] <= 100.0
    assert linear_eval.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_augment_replays_the_eager_augmentation():
    from mitools.data.augment import BatchAugment, CudaGraphAugment, preset_for

    aug = BatchAugment(preset_for("cifar10")).cuda()
    graphed = CudaGraphAugment(aug)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    graphed(x)  # capture
    torch.cuda.manual_seed(7)
    eager = aug(x)
    torch.cuda.manual_seed(7)
    replay = graphed(x)
    for e, r in zip(eager, replay, strict=True):
        torch.testing.assert_close(r, e, rtol=0, atol=1e-6)
    again = graphed(x)  # fresh parameters on every replay
    assert (again[0] - replay[0]).abs().max() > 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_the_hybrid_device_half():
    """``data.augment=hybrid`` on CUDA: the photometric stage of two batches of crops, captured
    as one graph, replays the eager stage at the same seed, with fresh draws per replay."""
    from mitools.data.augment import BatchAugment, CudaGraphAugment, preset_for

    aug = BatchAugment(preset_for("imagenet100", asymmetric=True)).cuda()
    graphed = CudaGraphAugment(aug.photometric)
    c1, c2 = (
        torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8, device="cuda") for _ in "12"
    )
    graphed(c1, c2)  # capture
    torch.cuda.manual_seed(7)
    eager = aug.photometric(c1, c2)
    torch.cuda.manual_seed(7)
    replay = graphed(c1, c2)
    for e, r in zip(eager, replay, strict=True):
        torch.testing.assert_close(r, e, rtol=0, atol=1e-5)
    again = graphed(c1, c2)
    assert (again[0] - replay[0]).abs().max() > 0.1
    # the other view's input is read too: new crops give new views
    new = graphed(c1, torch.zeros_like(c2))
    assert new[1].std() < replay[1].std()


def test_device_terms_stack_mixed_dtypes_exactly():
    from trainers.pretrain import _device_terms

    class Terms:
        last_terms = {"loss": torch.tensor(9.0), "a": torch.tensor(0.1, dtype=torch.float32),
                      "b": torch.tensor(1 / 3, dtype=torch.float64), "c": 2, "vec": torch.ones(3)}  # fmt: skip

    names, values, plain = _device_terms(Terms(), torch.tensor(1.25, dtype=torch.bfloat16))
    assert names == ["loss", "a", "b"] and plain == {"c": 2.0}
    assert values.dtype == torch.float64
    assert values.tolist() == [1.25, float(torch.tensor(0.1, dtype=torch.float32)), 1 / 3]


def test_progress_bar_shows_the_step_loss_and_images_per_second(tmp_path, monkeypatch):
    # the suite silences bars (conftest); switched on here, each epoch's bar must count its
    # steps and show the latest logged loss and the throughput
    import io

    from mitools.progress import progress

    bars: list = []

    def recording_progress(*args, **kwargs):
        bar = progress(*args, file=io.StringIO(), mininterval=0, **kwargs)
        bar.postfixes = []
        real = bar.set_postfix
        bar.set_postfix = lambda **kw: (bar.postfixes.append(kw), real(**kw))
        bars.append(bar)
        return bar

    monkeypatch.setenv("MITOOLS_NO_PROGRESS", "0")
    monkeypatch.setattr(pretrain, "progress", recording_progress)
    run = tmp_path / "bar"
    train(tiny_cfg(run, ["train.progress=true", "train.log_every_steps=1", "train.epochs=2"]))
    steps = pretrain.read_metrics(run, "step")
    assert [b.desc for b in bars] == ["epoch 1/2", "epoch 2/2"]
    assert [b.n for b in bars] == [3, 3] and all(b.total == 3 for b in bars)
    shown = [p for b in bars for p in b.postfixes]
    assert [p["loss"] for p in shown] == [f"{r['loss']:.4f}" for r in steps]
    assert [p["img_s"] for p in shown] == [f"{r['images_per_s']:.0f}" for r in steps]
    assert all(float(p["img_s"]) > 0 for p in shown)
