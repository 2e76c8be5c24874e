"""The trainer on every real on-disk dataset format, with the SHIPPED dataset configs.

Each case writes a tiny fixture in the dataset's real byte format (the writers of
tests/test_data_datasets.py: CIFAR pickles, STL-10 binaries, Tiny-ImageNet's official zip layout,
an ImageNet-100 tree with the 100 real CMC class folders) and runs ``trainers.pretrain`` with the
shipped ``<dataset>_<method>.yaml`` and overrides that make it tiny (small CNN, 2 steps, small
batch, CPU) but keep its code path: the batched augmentation (``data.augment=batch``, uint8 images,
materialised as one tensor with ``data.on_device=true``), the DataLoader-workers augmentation
(``data.augment=workers``: PIL -> TwoViewTransform in the loader, in 0 or 2 worker processes), the
online kNN / linear probe on the PIL probe splits, checkpoints and metrics. The cifar10 run goes
through the command line (``main``, with its preflight) and its checkpoint through
``python -m trainers.linear_eval --protocol cached``.

Truths: the step count the overrides imply; the checkpoint's stored encoder spec rebuilding a
model that takes its weights (strict); a fresh model from the same seed as the trainer's init
(the weights moved from it, but only by a training step's worth); accuracies that are multiples of
100 / (number of evaluated images); the online kNN equal to the offline one on the same
checkpoint and images.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from test_data_datasets import (
    make_cifar10,
    make_cifar100,
    make_imagenet100,
    make_stl10,
    make_tiny_imagenet,
)

from mitools.data import IMAGENET100_CLASSES, build_dataset, get_spec
from mitools.data.augment import BatchAugment, TwoViewTransform
from mitools.models import EncoderSpec, SSLModel
from trainers import linear_eval, pretrain
from trainers.config import load_config
from trainers.pretrain import build_online_model, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
STEPS = 2  # 2 steps: a warm-up schedule gives lr 0 at step 0

# Overrides shared by every case: tiny model and run, but the dataset's own loading, augmentation
# and evaluation path.
TINY = [
    "model.arch=small_cnn",
    "model.widths=[8,16]",
    "model.projector_dims=[32,16]",
    "train.epochs=1",
    f"train.max_steps_per_epoch={STEPS}",
    "train.device=cpu",
    "train.log_every_steps=1",
    "train.checkpoint_every_epochs=0",
    "train.progress=false",
    "train.tensorboard=false",
    "eval.every_epochs=1",
    "eval.max_samples=16",
    "eval.probe_steps=5",
    "eval.batch_size=16",
]

# case -> shipped config, fixture, batch size, extra overrides, expected augmentation mode
CASES = {
    # momentum encoder; uint8 images materialised as one tensor, batched augmentation; CLI
    "cifar10_emi-batch-on_device": (
        "cifar10_emi", "cifar10", 8,
        ["data.augment=batch", "data.on_device=true", "data.num_workers=0"],
    ),
    "cifar100_vicreg-workers2": (
        "cifar100_vicreg", "cifar100", 4, ["data.augment=workers", "data.num_workers=2"],
    ),
    # the MIO reference-code setting (its ResNet-50 replaced by the small CNN)
    "stl10_mio_reference-batch": (
        "stl10_mio_reference", "stl10", 3, ["data.augment=batch", "data.num_workers=0"],
    ),
    "tiny_imagenet_simclr-workers2": (
        "tiny_imagenet_simclr", "tiny_imagenet", 3,
        ["data.augment=workers", "data.num_workers=2"],
    ),
    "tiny_imagenet_simclr-batch": (
        "tiny_imagenet_simclr", "tiny_imagenet", 3, ["data.augment=batch", "data.num_workers=0"],
    ),
    # momentum encoder + predictor; asymmetric augmentation; PIL images of varying size
    "imagenet100_byol-workers0": (
        "imagenet100_byol", "imagenet100", 4,
        ["data.augment=workers", "data.num_workers=0", "model.predictor_dims=[32,16]"],
    ),
    # the shipped ImageNet-100 mode: workers crop, the device colours
    "imagenet100_emi-hybrid2": (
        "imagenet100_emi", "imagenet100", 4, ["data.num_workers=2"],
    ),
    "imagenet100_mio-hybrid0": (
        "imagenet100_mio", "imagenet100", 4, ["data.num_workers=0"],
    ),
}  # fmt: skip
CLI_CASE = "cifar10_emi-batch-on_device"
EVAL_CASE = "tiny_imagenet_simclr-batch"


def _write_fixture(name: str, root: Path) -> None:
    if name == "cifar10":
        make_cifar10(root, per_batch=4)  # 20 train, 3 test images
    elif name == "cifar100":
        make_cifar100(root, n_train=8, n_test=4)
    elif name == "stl10":
        make_stl10(root)  # train+unlabeled: 7 images
    elif name == "tiny_imagenet":
        make_tiny_imagenet(root)  # official layout, 6 train, 6 val
    elif name == "imagenet100":
        make_imagenet100(root, classes=list(IMAGENET100_CLASSES), per_class=(1, 1))
    else:  # pragma: no cover
        raise ValueError(name)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """Dataset name -> fixture root, each written once per module (per xdist worker)."""
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            roots[name] = tmp_path_factory.mktemp(name)
            _write_fixture(name, roots[name])
        return roots[name]

    return get


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset_root):
    """Case -> its finished run: config, run folder, the CLI's JSON line (CLI case), and what the
    augmentation and materialisation spies saw in this process. Each case trains once."""
    runs: dict[str, dict] = {}

    def get(case: str) -> dict:
        if case in runs:
            return runs[case]
        config, data, batch, extra = CASES[case]
        run_dir = tmp_path_factory.mktemp("runs") / case
        overrides = [*TINY, f"data.batch_size={batch}", f"data.root={dataset_root(data)}",
                     f"train.run_dir={run_dir}", *extra]  # fmt: skip
        cfg = load_config(CONFIGS / f"{config}.yaml", overrides)
        seen: dict[str, list] = {"batch_aug": [], "photometric": [], "two_view": 0, "on_device": []}
        batch_forward, two_view_call = BatchAugment.forward, TwoViewTransform.__call__
        photometric = BatchAugment.photometric
        materialise = pretrain.materialise_on_device

        def spy_batch(self, x, *args, **kwargs):
            seen["batch_aug"].append((x.dtype, tuple(x.shape)))
            return batch_forward(self, x, *args, **kwargs)

        def spy_photometric(self, x1, x2, *args, **kwargs):
            seen["photometric"].append((x1.dtype, tuple(x1.shape), x2.dtype, tuple(x2.shape)))
            return photometric(self, x1, x2, *args, **kwargs)

        def spy_two_view(self, img):
            seen["two_view"] += 1  # counted in this process only (not in worker processes)
            return two_view_call(self, img)

        def spy_materialise(*args, **kwargs):
            out = materialise(*args, **kwargs)
            seen["on_device"].append((out.dtype, tuple(out.shape)))
            return out

        cli = None
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(BatchAugment, "forward", spy_batch)
            mp.setattr(BatchAugment, "photometric", spy_photometric)
            mp.setattr(TwoViewTransform, "__call__", spy_two_view)
            mp.setattr(pretrain, "materialise_on_device", spy_materialise)
            if case == CLI_CASE:
                argv = ["--config", str(CONFIGS / f"{config}.yaml")]
                argv += [a for s in overrides for a in ("--set", s)]
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    assert pretrain.main(argv) == 0
                cli = json.loads(out.getvalue().strip().splitlines()[-1])
            else:
                pretrain.train(cfg)
        runs[case] = {"cfg": cfg, "run_dir": run_dir, "cli": cli, "seen": seen, "data": data}
        return runs[case]

    return get


def _is_multiple_of(acc: float, n: int) -> bool:
    """``acc`` (percent) is k * 100 / n for an integer k in [0, n]: a fraction of n images."""
    k = acc * n / 100.0
    return 0.0 <= acc <= 100.0 and abs(k - round(k)) < 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_shipped_config_trains_on_its_dataset_format(trained, case):
    run = trained(case)
    cfg, run_dir, seen = run["cfg"], run["run_dir"], run["seen"]
    config, data, batch, _ = CASES[case]
    assert cfg.data.name == data and cfg.model.arch == "small_cnn"

    # --- the augmentation path that ran
    size = get_spec(data).image_size
    if cfg.data.augment == "batch":
        assert seen["two_view"] == 0 and seen["photometric"] == []
        assert len(seen["batch_aug"]) == STEPS
        assert all(s == (torch.uint8, (batch, 3, size, size)) for s in seen["batch_aug"])
    else:
        assert seen["batch_aug"] == []
        if cfg.data.num_workers == 0:  # per image, only the batches trained on
            assert seen["two_view"] == STEPS * batch
    if cfg.data.augment == "hybrid":  # uint8 crops from the workers, coloured in the loop
        crop = (torch.uint8, (batch, 3, size, size))
        assert seen["photometric"] == [crop + crop] * STEPS
    else:
        assert seen["photometric"] == []
    if cfg.data.on_device:
        n_pretrain, size = {"cifar10": 20, "stl10": 7}[data], get_spec(data).image_size
        assert seen["on_device"] == [(torch.uint8, (n_pretrain, 3, size, size))]
    else:
        assert seen["on_device"] == []

    # --- checkpoint: weights_only, step count, rebuildable encoder
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == STEPS and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    assert state["config"]["data"]["name"] == data
    assert state["config"]["data"]["augment"] == cfg.data.augment
    spec = EncoderSpec.from_dict(state["encoder_spec"])
    assert spec.arch == "small_cnn" and spec.in_channels == 3
    assert spec.to_dict() == cfg.model.encoder_spec_dict()
    model = SSLModel(spec)
    model.load_state_dict(state["model"])  # strict
    assert (state["ema"] is not None) == cfg.model.momentum_encoder
    if cfg.model.predictor_dims is not None:
        assert model.predictor is not None
    x = torch.rand(2, 3, 32, 32)
    h, z = model.eval()(x)
    assert h.shape == (2, model.feature_dim) and z.shape == (2, 16)
    assert torch.isfinite(h).all() and torch.isfinite(z).all()

    # --- the weights moved from the trainer's init, by a training step's worth
    torch.manual_seed(cfg.train.seed)
    fresh = build_online_model(cfg, torch.device("cpu"))
    init = {k: p.detach() for k, p in fresh.named_parameters()}
    trained_params = {k: p.detach() for k, p in model.named_parameters()}
    assert init.keys() == trained_params.keys()
    assert all(torch.isfinite(p).all() for p in trained_params.values())
    # conv / linear weights (LARS-adapted: a step moves them by about lr * eta of their norm;
    # BN affine parameters and biases, not adapted, can move by far more in 2 steps)
    init = {k: p for k, p in init.items() if p.ndim > 1}
    diff = math.sqrt(sum(float((trained_params[k] - p).square().sum()) for k, p in init.items()))
    norm = math.sqrt(sum(float(p.square().sum()) for p in init.values()))
    assert 1e-7 < diff / norm < 0.2, diff / norm  # a different random init: about 1.4
    if state["ema"] is not None:  # the EMA target: updated from its init, lagging the online
        ema = {k: v for k, v in state["ema"].items() if k in init and k.startswith("backbone.")}
        assert ema and all(ema[k].shape == init[k].shape for k in ema)
        assert any(not torch.equal(ema[k], init[k]) for k in ema)
        assert any(not torch.equal(ema[k], trained_params[k]) for k in ema)

    # --- metrics: finite losses every step, one epoch record with the online evaluation
    steps = read_metrics(run_dir, "step")
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in steps)
    (epoch,) = read_metrics(run_dir, "epoch")
    assert epoch["epoch"] == 1 and epoch["step"] == STEPS
    assert math.isfinite(epoch["mean_loss"])
    assert epoch["mean_loss"] == pytest.approx(sum(r["loss"] for r in steps) / STEPS)
    eval_split = get_spec(data).eval_split
    n_eval = min(len(build_dataset(data, cfg.data.root, eval_split)), cfg.eval.max_samples)
    for key in ("knn_top1", "probe_top1"):
        assert _is_multiple_of(epoch[key], n_eval), (key, epoch[key], n_eval)
    assert math.isfinite(epoch["feat_effective_rank"]) and epoch["feat_effective_rank"] >= 1.0

    if run["cli"] is not None:
        cli = run["cli"]
        assert cli["step"] == STEPS and cli["epoch"] == 1 and cli["interrupted"] is False
        assert cli["knn_top1"] == epoch["knn_top1"] and cli["run_dir"] == str(run_dir)


def test_linear_eval_cached_on_a_trained_checkpoint(trained, tmp_path):
    """``python -m trainers.linear_eval --protocol cached`` on a run's checkpoint: the dataset and
    its root come from the checkpoint; the kNN equals the run's own online kNN (same backbone,
    same images: the fixture's colour-coded Tiny-ImageNet images, all of them evaluated)."""
    run = trained(EVAL_CASE)
    cfg = run["cfg"]
    out = tmp_path / "probe" / "result.json"
    argv = ["--checkpoint", str(run["run_dir"] / "last.pt"), "--protocol", "cached",
            "--steps", str(cfg.eval.probe_steps), "--knn-k", str(cfg.eval.knn_k),
            "--device", "cpu", "--batch-size", "16", "--out", str(out)]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert linear_eval.main(argv) == 0
    res = json.loads(out.read_text())
    assert json.loads(printed.getvalue()) == res
    assert res["data"] == "tiny_imagenet" and res["epoch"] == 1
    assert res["protocol"] == "cached" and res["solver"] == "lbfgs"
    assert res["steps"] == cfg.eval.probe_steps and res["weight_decay"] == 1e-4
    assert res["n_train"] == 6 and res["n_eval"] == 6 and res["feature_dim"] == 16
    for key in ("linear_top1", "knn_top1"):
        assert _is_multiple_of(res[key], 6), (key, res[key])
    (epoch,) = read_metrics(run["run_dir"], "epoch")
    assert res["knn_top1"] == pytest.approx(epoch["knn_top1"])
