"""Training throughput: the model ceiling vs the full pre-training pipeline.

    python -m benchmarks.train_throughput [--quick] [--device cpu|cuda] [--out results/bench]
        [--case digits_emi] [--case cifar10_mio] [--steps 20] [--batch 256]
        [--set train.compile=true ...]

For each case (a trainer config):

(a) ceiling: forward + backward of both views through the encoder (``TwoViewModel``) on
    synthetic tensors already on the device, a trivial loss (mean of z^2), same AMP /
    channels_last / ``train.compile`` settings as the trainer; no data, no augmentation, no
    optimiser step. For a config with a momentum encoder (``model.momentum_encoder``) the
    ceiling also runs the target network's forward of both views (no gradient), as the trainer
    does: that is model compute of the method, not pipeline overhead. ``--ceiling online`` leaves
    it out (the online network only), which is what the ceiling measured before 2026-11-23.
(b) pipeline: the real loop of ``trainers.pretrain.train`` (DataLoader, two augmented views,
    the SSL loss, optimiser and schedule, EMA target when configured, non-finite check,
    logging), timed over the second of two epochs of ``--steps`` steps (the first warms up),
    monitoring off.

Images/s count source images (one image = two views), so the ratio (b)/(a) is the fraction of
the model's compute ceiling the pipeline reaches. Peak memory is reported on CUDA
(``torch.cuda.max_memory_allocated``) for (a) and (b). CIFAR-10 cases run on a fake CIFAR-10
folder written to a temporary directory (random uint8 images in the official pickle format), so
the exact data path runs without the real files; ImageNet-100 cases (``--case imagenet100_mio``)
on a fake ImageFolder tree of 500x375 JPEGs, with the config's workers (10) on CUDA and the
hybrid augmentation unless ``--set data.augment=workers``; digits is bundled.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis._common import write_table
from mitools.timing import time_calls
from trainers.config import load_config
from trainers.pretrain import TwoViewModel, configure_cuda_backends, train, use_channels_last

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"


def write_fake_cifar10(root: Path, n_train: int, n_test: int = 500, seed: int = 0) -> Path:
    """Random uint8 images in the CIFAR-10 python-pickle layout under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = int(np.ceil(n_train / 5))
    for i in range(1, 6):
        data = rng.integers(0, 256, (per, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": rng.integers(0, 10, n_test).tolist()}, f)  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def write_fake_imagenet100(root: Path, n_train: int, n_val: int = 100, distinct: int = 64) -> Path:
    """ImageNet-100's ImageFolder tree under ``root`` (every class of ``IMAGENET100_CLASSES``,
    ``train/`` and ``val/``) holding 500x375 JPEGs (ImageNet's typical size): ``distinct``
    different files, repeated to fill ``n_train`` / ``n_val`` images (the decode cost is that of
    real photographs of the size; the content does not matter for throughput)."""
    from benchmarks.bench_worker_augment import synthetic_jpegs
    from mitools.data.datasets import IMAGENET100_CLASSES

    files = synthetic_jpegs(distinct, 500, 375)
    classes = list(IMAGENET100_CLASSES)
    for split, n in (("train", n_train), ("val", n_val)):
        per_class = max(1, -(-n // len(classes)))
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                (folder / f"{wnid}_{k}.JPEG").write_bytes(files[(c * per_class + k) % distinct])
    return root


def ceiling(
    cfg, device: torch.device, steps: int, with_target: bool = True
) -> tuple[float, float | None]:
    """Images/s of forward+backward of both views on synthetic on-device tensors (plus the
    momentum encoder's forward when the config has one and ``with_target``)."""
    from mitools.data.datasets import get_spec
    from mitools.models import EncoderSpec, MomentumEncoder, SSLModel

    spec = get_spec(cfg.data.name)
    if device.type == "cuda":
        configure_cuda_backends(cfg)  # as trainers.pretrain.train
    model = SSLModel(EncoderSpec.from_dict(cfg.model.encoder_spec_dict())).to(device)
    cl = use_channels_last(cfg, device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    net = TwoViewModel(model).train()
    target = None
    if with_target and cfg.model.momentum_encoder:
        target = MomentumEncoder(model, buffers=cfg.model.momentum_buffers)
    if cfg.train.compile:  # same model code as the pipeline compiles
        net = torch.compile(net)
    b, s = cfg.data.batch_size, spec.image_size
    x1 = torch.randn(b, spec.channels, s, s, device=device)
    x2 = torch.randn(b, spec.channels, s, s, device=device)
    if cl:
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    amp = device.type == "cuda" and cfg.train.amp in ("auto", "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x1, x2)
            loss = out[4].float().square().mean() + out[5].float().square().mean()
            if target is not None:  # as the trainer: the target's forward, no gradient
                target(x1), target(x2)
        loss.backward()
        model.zero_grad(set_to_none=True)

    times = time_calls(step, device, steps, warmup=2)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return b / statistics.median(times), peak


def pipeline(cfg, device: torch.device) -> tuple[float, float | None]:
    """Images/s of the trainer's loop (second epoch), peak memory on CUDA."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    summary = train(cfg)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if summary["interrupted"] or len(summary["epoch_metrics"]) < 2:
        return float("nan"), peak  # the timed (second) epoch did not complete
    return float(summary["epoch_metrics"][-1]["images_per_s"]), peak


def run(
    quick: bool,
    out: Path,
    cases: list[str] | None = None,
    steps: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    extra: list[str] | None = None,
    ceiling_kind: str = "full",
    repeats: int = 1,
) -> pd.DataFrame:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = cases or ["digits_emi", "cifar10_mio"]
    steps = steps or (3 if quick else 20)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            b = batch or (32 if quick and dev.type == "cpu" else 256)
            overrides = [
                "train.epochs=2", f"train.max_steps_per_epoch={steps}", "eval.every_epochs=0",
                "train.log_every_steps=0", "train.checkpoint_every_epochs=0",
                f"train.run_dir={tmp}/run_{case}", f"data.batch_size={b}",
                f"train.device={dev.type}",
            ]  # fmt: skip
            if case.startswith("cifar10"):
                n_fake = max(2 * b * steps, 1000)
                write_fake_cifar10(Path(tmp) / "cifar", n_fake)
                overrides += [
                    f"data.root={tmp}/cifar",
                    "data.num_workers=0" if dev.type == "cpu" else "data.num_workers=8",
                ]
            if case.startswith("imagenet100"):
                # fewer distinct files than images: the page cache holds them, as it would a
                # dataset read for the second time; the decoding is still done per image
                write_fake_imagenet100(Path(tmp) / "in100", max(2 * b * steps, 1000))
                overrides += [f"data.root={tmp}/in100"]
                if dev.type == "cpu":
                    overrides += ["data.num_workers=0", "model.arch=small_cnn"]
            cfg = load_config(CONFIGS / f"{case}.yaml", overrides + list(extra or []))
            with_target = ceiling_kind == "full"
            for repeat in range(repeats):
                # alternate the two measurements: a launch-bound ceiling drifts between runs,
                # so each ratio pairs measurements taken back to back
                shutil.rmtree(f"{tmp}/run_{case}", ignore_errors=True)
                a_ips, a_mem = ceiling(cfg, dev, max(steps, 5), with_target=with_target)
                b_ips, b_mem = pipeline(cfg, dev)
                rows.append({
                    "case": case, "repeat": repeat, "arch": cfg.model.arch, "loss": cfg.loss.name,
                    "batch": b, "device": str(dev), "ceiling_img_s": a_ips,
                    "pipeline_img_s": b_ips, "ratio": b_ips / a_ips,
                    "ceiling_includes_target": bool(with_target and cfg.model.momentum_encoder),
                    "amp": cfg.train.amp, "compile": cfg.train.compile,
                    "compile_loss": cfg.train.compile_loss,
                    "augment": cfg.data.augment, "extra": " ".join(extra or []),
                    "ceiling_peak_mib": a_mem, "pipeline_peak_mib": b_mem,
                    "threads": torch.get_num_threads(),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    if repeats > 1:
        spread = df.groupby("case")["ratio"].agg(["median", "min", "max"])
        print(f"ratio over {repeats} paired repeats:\n{spread.to_string()}", flush=True)
    meta = {"quick": quick, "steps": steps, "device": str(dev), "repeats": repeats}
    write_table(df, out, "train_throughput", meta)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--case", action="append", default=None, help="config name (repeatable)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every case (repeatable)",
    )
    parser.add_argument(
        "--ceiling",
        choices=("full", "online"),
        default="full",
        help="full: the ceiling includes a momentum encoder's forward when the config has one "
        "(default); online: the online network only",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="ceiling/pipeline pairs measured back to back per case; prints median/min/max ratio",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    df = run(
        args.quick, Path(args.out), args.case, args.steps, args.batch, args.device, args.set,
        args.ceiling, args.repeats,
    )  # fmt: skip
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
