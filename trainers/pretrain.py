"""Self-supervised pre-training, one readable loop (nanoGPT style).

``python -m trainers.pretrain --config CONFIG [--set key=value ...] [--resume auto|PATH]``
(no ``--config``: the embedded digits + EMI default). The same command under
``torchrun --nproc_per_node=N`` trains with DistributedDataParallel (process group from the
env:// variables; gloo on CPU, nccl on CUDA; ``data.batch_size`` is the global batch).

Every run writes into ``train.run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON
object per line: ``"kind": "step"`` every ``train.log_every_steps`` steps and ``"kind": "epoch"``
after each epoch, with the online-monitoring numbers), TensorBoard event files under ``tb/``
(``train.tensorboard``, on by default; without the tensorboard package that is a one-line error
before any work), and checkpoints: ``last.pt`` after every
epoch and ``epoch_XXXX.pt`` every ``train.checkpoint_every_epochs``. Checkpoints follow
:mod:`mitools.checkpoint` (atomic, ``weights_only`` loadable) plus ``batch_in_epoch`` (batches of
the current epoch already done; non-zero only for checkpoints written on SIGTERM/SIGINT).

Resuming is exact on CPU with ``train.deterministic`` and ``data.num_workers=0``: the batch order
of epoch e is a permutation seeded by ``(seed, e)`` (sharded over ranks like DistributedSampler),
augmentation draws from the global RNG, whose state the checkpoint stores.

On CUDA the two views come from a dataset resident on the GPU (``data.on_device``), augmented by
a CUDA-graph replay of :class:`~mitools.data.augment.BatchAugment` (``data.augment_graph``);
ImageNet-100 (``data.augment: hybrid``) is decoded, cropped and flipped in DataLoader workers and
coloured, blurred and normalised by a graph replay of ``BatchAugment.photometric``; and
the loss is read back to the host every ``train.check_every_steps`` steps (50; every step on CPU),
so the host can queue work ahead of the GPU.

Loss dispatch (``ssl_loss``): without a momentum encoder, ``loss(p1, p2)`` where p is the
predictor output if the encoder has a predictor, else the projection z. With one (targets t1, t2
from the EMA encoder, no gradient): byol and mec take ``loss(p1, p2, t1, t2)`` natively; other
losses use ``loss.target_pairing="cross"``: ``loss(cat(p1, p2), cat(t2, t1))``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mitools.progress import progress, progress_enabled
from trainers.config import (
    _FREE_FORM,
    Config,
    ConfigError,
    check_loss_params,
    config_to_dict,
    dump_yaml,
    load_config,
)

if TYPE_CHECKING:
    from mitools.data.augment import AugmentPreset
    from mitools.models import SSLModel

__all__ = [
    "ConstantLoss",
    "materialise_on_device",
    "DeviceResidentLoader",
    "EpochBatchSampler",
    "NonFiniteLossError",
    "TwoViewModel",
    "build_augment_preset",
    "build_loss_from_config",
    "build_online_model",
    "configure_cuda_backends",
    "preflight",
    "resolve_run_dir",
    "ssl_loss",
    "train",
    "main",
]


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "digits_emi.yaml"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class ConstantLoss(nn.Module):
    """Control: a constant loss with zero gradient (``0 * sum(z) + 1``); nothing is learned."""

    def __init__(self) -> None:
        super().__init__()
        self.last_terms: dict[str, Any] = {}

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        loss = 0.0 * (z1.sum() + z2.sum()) + 1.0
        self.last_terms = {"loss": loss.detach()}
        return loss


class TwoViewModel(nn.Module):
    """Both views through the encoder in ONE forward (what DDP wraps), BN statistics per view.

    Returns ``(h1, h2, z1, z2, p1, p2)``; p = predictor(z) if the encoder has one, else z.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, ...]:
        h1, z1 = self.model(x1)
        h2, z2 = self.model(x2)
        if self.model.predictor is not None:
            return h1, h2, z1, z2, self.model.predictor(z1), self.model.predictor(z2)
        return h1, h2, z1, z2, z1, z2


class EpochBatchSampler:
    """Batches of indices for epoch e: a permutation seeded by (seed, e), rank ``rank`` taking
    every ``world``-th index (as DistributedSampler with drop_last), full batches only; the
    first ``start_batch`` batches are skipped (mid-epoch resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size < 1 or n // world < batch_size:
            raise ValueError(
                f"per-rank batch {batch_size} needs >= {batch_size} items per rank; "
                f"dataset has {n} for {world} rank(s)"
            )
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.n // self.world) // self.batch_size - self.start_batch

    def index_matrix(self) -> Tensor:
        """The remaining batches of the epoch as one (batches, batch_size) int64 tensor."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world
        mine = perm[: per_rank * self.world][self.rank :: self.world]
        n_batches = per_rank // self.batch_size
        b = self.batch_size
        return mine[self.start_batch * b : n_batches * b].view(-1, b)

    def __iter__(self):
        yield from self.index_matrix().tolist()


class DeviceResidentLoader:
    """Batches indexed from one tensor already on the training device (``data.on_device``).

    Same batches, in the same order, as a DataLoader over the dataset with the same
    :class:`EpochBatchSampler`; yields ``(images, None)``. The epoch's indices travel to the
    device once per epoch.
    """

    def __init__(self, images: Tensor, sampler: EpochBatchSampler) -> None:
        self.images, self.sampler = images, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        idx = self.sampler.index_matrix().to(self.images.device, non_blocking=False)
        for row in idx:
            yield self.images.index_select(0, row), None


def _dataset_gib(dataset) -> float:
    item = torch.as_tensor(dataset[0][0])
    return len(dataset) * item.numel() * item.element_size() / 2**30


def materialise_on_device(dataset, device: torch.device, num_workers: int = 0) -> Tensor:
    """Every item's image of ``dataset`` (fixed-size tensors) stacked into one tensor on ``device``."""
    from torch.utils.data import DataLoader

    first = torch.as_tensor(dataset[0][0])
    out = torch.empty((len(dataset), *first.shape), dtype=first.dtype, device=device)
    loader = DataLoader(dataset, batch_size=1024, shuffle=False, num_workers=num_workers)
    i = 0
    for x, _ in loader:
        out[i : i + x.shape[0]].copy_(x)
        i += x.shape[0]
    return out


# ----------------------------------------------------------------------------- set-up helpers


def resolve_run_dir(cfg: Config) -> Path:
    """``train.run_dir`` with ``{data}``, ``{loss}``, ``{arch}``, ``{seed}`` filled in."""
    fields = dict(data=cfg.data.name, loss=cfg.loss.name, arch=cfg.model.arch, seed=cfg.train.seed)
    try:
        return Path(cfg.train.run_dir.format(**fields))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"train.run_dir={cfg.train.run_dir!r}: placeholders must be among "
            f"{', '.join('{' + k + '}' for k in fields)} ({type(exc).__name__}: {exc})"
        ) from exc


def _loss_params(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key, value in params.items():
        if key.endswith("dtype") and isinstance(value, str):
            if value not in ("float32", "float64"):
                raise ConfigError(f"loss.params.{key}: expected float32 or float64, got {value!r}")
            out[key] = getattr(torch, value)
    return out


def _check_loss_param_types(loss_cls: type, params: dict[str, Any]) -> None:
    """``loss.params`` is free-form YAML: where the loss's default is a number or a bool, the
    value must be one too, so a typo is named here and not deep inside the loss."""
    signature = inspect.signature(loss_cls.__init__).parameters
    for key, value in params.items():
        default = signature[key].default if key in signature else None
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ConfigError(
                f"loss.params.{key}: expected {wanted}, got {value!r} ({type(value).__name__})"
            )


# EMILoss options read only by its Taylor log-determinant
_EMI_TAYLOR_ONLY = {
    "order", "scale", "on_violation", "running_momentum", "running_power_iters",
    "running_warm_iters",
}  # fmt: skip


def build_loss_from_config(cfg: Config, world: int = 1) -> nn.Module:
    """The loss module; ``gather_distributed`` is set for batch-coupled losses under DDP."""
    from mitools.losses import BATCH_COUPLED, LOSSES, build_loss

    check_loss_params(cfg.loss.name, cfg.loss.params)
    if cfg.loss.name == "constant":
        return ConstantLoss()
    params = _loss_params(cfg.loss.params)
    _check_loss_param_types(LOSSES[cfg.loss.name], params)
    if cfg.loss.name == "emi" and params.get("logdet", "exact") == "exact":
        unused = sorted(set(params) & _EMI_TAYLOR_ONLY)
        if unused:
            raise ConfigError(
                f"loss.params.{unused[0]} has no effect with loss.params.logdet='exact' (EMI's "
                "default); set loss.params.logdet=taylor to use the Taylor surrogate, or drop "
                + ", ".join(f"loss.params.{k}" for k in unused)
            )
    if cfg.loss.name in BATCH_COUPLED:
        params["gather_distributed"] = bool(cfg.loss.gather_distributed and world > 1)
    if cfg.loss.name == "byol" and cfg.model.momentum_encoder:
        params.setdefault("stop_gradient", True)
    loss_cls = LOSSES.get(cfg.loss.name.lower().replace("-", "_"))
    if loss_cls is not None and "check_finite" in inspect.signature(loss_cls.__init__).parameters:
        # The loop checks the loss itself (NonFiniteLossError); the loss's own input check
        # would synchronise with the device on every step.
        params.setdefault("check_finite", False)
    try:
        return build_loss(cfg.loss.name, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss: {exc}") from exc


def _check_loss_batch(cfg: Config, loss_fn: nn.Module, world: int) -> None:
    """EMI's exact batch covariance without ridge needs more rows than covariance dimensions:
    checked before any work (the loss would raise at the first step). The loss sees the global
    batch when it gathers over ranks, else the rank's share; with a momentum target and cross
    pairing, both views' rows (``ssl_loss``)."""
    from mitools.losses import EMILoss, min_batch_size
    from mitools.models import EncoderSpec, SSLModel

    if not isinstance(loss_fn, EMILoss) or loss_fn.covariance == "ema" or loss_fn.ridge > 0:
        return
    with torch.device("meta"):  # no weights allocated: only the projection width is needed
        d = SSLModel(EncoderSpec.from_dict(cfg.model.encoder_spec_dict())).projection_dim
    rows = cfg.data.batch_size if loss_fn.gather_distributed else cfg.data.batch_size // world
    if cfg.model.momentum_encoder:
        rows *= 2
    need = min_batch_size(d, form=loss_fn.form, center=loss_fn.center)
    if rows < need:
        per_rank = "" if loss_fn.gather_distributed or world == 1 else f" per rank ({world} ranks)"
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} gives the EMI loss {rows} rows{per_rank}, "
            f"fewer than the {need} its exact {loss_fn.form} covariance of {d}-dimensional "
            "projections needs; raise data.batch_size, or set loss.params.ridge > 0 (e.g. 1e-4) "
            "or loss.params.covariance=ema"
        )


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether a run keeps its model and images in channels-last memory format:
    ``train.channels_last`` on CUDA only, where it lets cuDNN's tensor-core convolutions skip
    layout transposes. On the CPU the flag is ignored so that the embedded default's numbers do
    not depend on it; the layout changes only the order of float sums, never the maths (tested on
    the CPU by forcing it)."""
    return device.type == "cuda" and cfg.train.channels_last


def build_online_model(
    cfg: Config, device: torch.device, world: int = 1, channels_last: bool = False
) -> SSLModel:
    """The online encoder + projector of ``cfg.model`` on ``device``, as the trainer builds it.

    With ``world > 1`` and ``model.sync_batchnorm`` its BatchNorm layers become SyncBatchNorm,
    which normalises with the statistics of the global batch (all ranks), so DDP on ``world``
    ranks computes the same BN outputs and gradients as one process with the whole batch.
    A momentum target built from it inherits the SyncBatchNorm layers.
    """
    from mitools.models import EncoderSpec, SSLModel

    model = SSLModel(EncoderSpec.from_dict(cfg.model.encoder_spec_dict())).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world > 1 and cfg.model.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_augment_preset(cfg: Config) -> AugmentPreset:
    """The two-view augmentation of a run: ``data.preset`` (default: the dataset's), BYOL's
    asymmetric views when ``data.asymmetric`` (None: for ``loss.name: byol`` only), then the
    ``data.view`` field overrides on both views, normalised with the dataset's mean and std.
    Errors are ConfigErrors naming the key (an unknown ViewConfig field names the nearest)."""
    import difflib

    from mitools.data.augment import ViewConfig, get_preset
    from mitools.data.datasets import get_spec

    dspec = get_spec(cfg.data.name)
    asym = cfg.data.asymmetric if cfg.data.asymmetric is not None else cfg.loss.name == "byol"
    name = cfg.data.preset if cfg.data.preset is not None else dspec.augmentation
    try:
        preset = get_preset(name, asymmetric=asym, mean=dspec.mean, std=dspec.std)
    except ValueError as exc:
        raise ConfigError(f"data.preset={name!r} for {dspec.name}: {exc}") from exc
    if not cfg.data.view:
        return preset
    fields = {f.name: f for f in dataclasses.fields(ViewConfig)}
    overrides: dict[str, Any] = {}
    for key, value in cfg.data.view.items():
        if key not in fields or key == "size":
            near = difflib.get_close_matches(key, [k for k in fields if k != "size"], n=1)
            hint = f"; did you mean 'data.view.{near[0]}'?" if near else ""
            raise ConfigError(f"unknown augmentation field 'data.view.{key}'{hint}")
        overrides[key] = tuple(value) if isinstance(value, list) else value
    try:
        return dataclasses.replace(
            preset,
            view1=dataclasses.replace(preset.view1, **overrides),
            view2=dataclasses.replace(preset.view2, **overrides),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"data.view: {exc}") from exc


def build_optimizer_from_config(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optim`` over ``model``, its learning rate scaled from
    ``data.batch_size`` by ``optim.lr_scaling`` (as the trainer builds it)."""
    from mitools.optim import build_optimizer, scaled_lr

    o = cfg.optim
    lr = o.lr if o.lr_scaling == "none" else scaled_lr(o.lr, cfg.data.batch_size, o.lr_scaling)
    return build_optimizer(
        o.name, model, lr, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta,
        clip_lr=o.clip_lr,
    )  # fmt: skip


def preflight(cfg: Config, resume: str | None = None) -> Path:
    """One-line ConfigError for problems found BEFORE any work: bad encoder/loss/optimiser
    settings, a missing dataset (names the dataset and the expected layout), a batch larger than
    the dataset, an unwritable run folder, and a ``resume`` checkpoint that is unreadable or was
    written for another model, loss or optimiser (:func:`check_resume`). Returns the run
    folder."""
    from mitools.data.augment import PRESET_NAMES
    from mitools.data.datasets import get_spec
    from mitools.models import EncoderSpec
    from mitools.optim import OPTIMIZERS

    try:
        spec = get_spec(cfg.data.name)
    except ValueError as exc:
        raise ConfigError(f"data.name: {exc}") from exc
    checks = [
        (cfg.data.augment in ("batch", "hybrid", "workers"),
         f"data.augment must be 'batch', 'hybrid' or 'workers', got {cfg.data.augment!r}"),
        (not (cfg.data.on_device and cfg.data.augment != "batch"),
         "data.on_device=true needs data.augment=batch (with workers or hybrid, workers read "
         "the images)"),
        (cfg.train.check_every_steps >= 0, "train.check_every_steps must be >= 0"),
        (not (cfg.data.augment_graph and (cfg.train.device == "cpu" or not torch.cuda.is_available())),
         "data.augment_graph=true needs CUDA (a captured CUDA graph); use null or false on CPU"),
        (cfg.data.preset is None or cfg.data.preset in PRESET_NAMES, f"data.preset: one of {PRESET_NAMES}"),
        (cfg.optim.name in OPTIMIZERS, f"optim.name must be one of {OPTIMIZERS}"),
        (cfg.optim.lr_scaling in ("none", "linear", "sqrt"), "optim.lr_scaling: none|linear|sqrt"),
        (cfg.train.amp in ("auto", "bf16", "fp16", "off"), "train.amp: auto|bf16|fp16|off"),
        (cfg.train.device in ("auto", "cpu", "cuda"), "train.device: auto|cpu|cuda"),
        (cfg.train.device != "cuda" or torch.cuda.is_available(),
         "train.device=cuda but CUDA is not available here (no GPU, or a CPU-only torch); "
         "use train.device=auto or cpu"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.data.batch_size >= 2, "data.batch_size must be >= 2"),
        (cfg.loss.target_pairing == "cross", "loss.target_pairing: only 'cross' is implemented"),
        (not (cfg.train.compile_loss and cfg.loss.name == "mec" and cfg.loss.mec_warmup_epochs > 0),
         "train.compile_loss=true does not work with MEC's lambda warm-up (loss.mec_warmup_epochs "
         "> 0): the value changes every step and would recompile the loss"),
        (cfg.model.in_channels == spec.channels,
         f"model.in_channels={cfg.model.in_channels} but {spec.name} has {spec.channels} channels"),
        *_range_checks(cfg),
    ]  # fmt: skip
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    try:
        EncoderSpec.from_dict(cfg.model.encoder_spec_dict())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from exc
    build_augment_preset(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _check_loss_batch(cfg, build_loss_from_config(cfg, world), world)
    if cfg.model.sync_batchnorm and world > 1 and not _will_use_cuda(cfg):
        raise ConfigError(
            "model.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
            "set it to false for CPU/gloo runs"
        )
    _check_tensorboard(cfg)
    _download_on_every_node(cfg, _Dist())  # this process only: rank 0 (main checks RANK)
    for split in {spec.pretrain_split, spec.train_split, spec.eval_split}:
        ds = _dataset(cfg, split, _Dist())
        if split == spec.pretrain_split and len(ds) // world < cfg.data.batch_size // world:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is larger than the {cfg.data.name} "
                f"pre-training split ({len(ds)} images"
                + (f", {len(ds) // world} per rank for {world} ranks" if world > 1 else "")
                + "); lower data.batch_size"
            )
    from mitools.checkpoint import folder_write_problem

    run_dir = resolve_run_dir(cfg)
    problem = folder_write_problem(run_dir)
    if problem:
        raise ConfigError(f"run folder {run_dir}: {problem}")
    check_resume(cfg, resume, run_dir)
    return run_dir


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _range_checks(cfg: Config) -> list[tuple[bool, str]]:
    """Value ranges that would otherwise fail late (after an epoch of training, before its
    checkpoint) or be silently adjusted (``knn_k=0`` used as 1); NaN fails every check."""
    o, m, e, t, d = cfg.optim, cfg.model, cfg.eval, cfg.train, cfg.data
    in_unit = lambda x: _finite(x) and 0 <= x <= 1  # noqa: E731
    return [
        (_finite(o.lr) and o.lr > 0, f"optim.lr must be a finite number > 0, got {o.lr}"),
        (_finite(o.weight_decay) and o.weight_decay >= 0,
         f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (_finite(o.momentum) and 0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}"),
        (_finite(o.eta) and o.eta > 0, f"optim.eta (LARS trust coefficient) must be > 0, got {o.eta}"),
        (_finite(o.warmup_epochs) and o.warmup_epochs >= 0,
         f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}"),
        (in_unit(o.final_lr_ratio), f"optim.final_lr_ratio must be in [0, 1], got {o.final_lr_ratio}"),
        (in_unit(o.warmup_start_ratio),
         f"optim.warmup_start_ratio must be in [0, 1], got {o.warmup_start_ratio}"),
        (o.grad_clip is None or (_finite(o.grad_clip) and o.grad_clip > 0),
         f"optim.grad_clip must be null or > 0, got {o.grad_clip}"),
        (in_unit(m.momentum_base), f"model.momentum_base must be in [0, 1], got {m.momentum_base}"),
        (in_unit(m.momentum_final), f"model.momentum_final must be in [0, 1], got {m.momentum_final}"),
        (m.momentum_buffers in ("own", "copy", "ema"),
         f"model.momentum_buffers must be 'own', 'copy' or 'ema', got {m.momentum_buffers!r}"),
        (e.every_epochs >= 0, f"eval.every_epochs must be >= 0 (0 = never), got {e.every_epochs}"),
        (e.knn_k >= 1, f"eval.knn_k must be >= 1, got {e.knn_k}"),
        (_finite(e.knn_temperature) and e.knn_temperature > 0,
         f"eval.knn_temperature must be > 0, got {e.knn_temperature}"),
        (e.probe_steps >= 1, f"eval.probe_steps must be >= 1, got {e.probe_steps}"),
        (_finite(e.probe_weight_decay) and e.probe_weight_decay >= 0,
         f"eval.probe_weight_decay must be >= 0, got {e.probe_weight_decay}"),
        (e.max_samples >= 2, f"eval.max_samples must be >= 2, got {e.max_samples}"),
        (e.batch_size >= 1, f"eval.batch_size must be >= 1, got {e.batch_size}"),
        (t.checkpoint_every_epochs >= 0,
         f"train.checkpoint_every_epochs must be >= 0 (0 = only last.pt), got {t.checkpoint_every_epochs}"),
        (t.log_every_steps >= 0, f"train.log_every_steps must be >= 0, got {t.log_every_steps}"),
        (t.max_steps_per_epoch >= 0, f"train.max_steps_per_epoch must be >= 0, got {t.max_steps_per_epoch}"),
        (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
        (_finite(d.on_device_max_gib) and d.on_device_max_gib > 0,
         f"data.on_device_max_gib must be > 0, got {d.on_device_max_gib}"),
        (cfg.loss.mec_warmup_epochs >= 0,
         f"loss.mec_warmup_epochs must be >= 0, got {cfg.loss.mec_warmup_epochs}"),
    ]  # fmt: skip


def _will_use_cuda(cfg: Config) -> bool:
    return cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())


def _spec_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [
        f"{k}: {stored.get(k)!r} (checkpoint) vs {wanted.get(k)!r} (config)"
        for k in keys
        if stored.get(k) != wanted.get(k)
    ]


def check_resume(cfg: Config, resume: str | None, run_dir: Path | None = None) -> Path | None:
    """The checkpoint ``resume`` names ("auto": the newest valid one in the run folder, None:
    none), checked to continue THIS run: readable by the safe loader, and written for the same
    encoder (architecture, stem, widths, projector, predictor), the same loss and optimiser, and
    a momentum encoder exactly when the config has one. Anything else is a one-line ConfigError
    naming the differences, raised before any work (the state would not load, or would load
    into a different run)."""
    return _check_resume(cfg, resume, run_dir)[0]


def _check_resume(
    cfg: Config, resume: str | None, run_dir: Path | None = None
) -> tuple[Path | None, dict[str, Any] | None]:
    """:func:`check_resume`, and the checkpoint's state it loaded (on the CPU), which the
    trainer resumes from without reading the file again."""
    from mitools.checkpoint import CheckpointError, find_latest_checkpoint, load_checkpoint
    from mitools.models import EncoderSpec, SSLModel, StateDictMismatchError, _check_fits

    if not resume:
        _check_fresh_run_dir(run_dir if run_dir is not None else resolve_run_dir(cfg))
        return None, None
    if resume == "auto":
        path = find_latest_checkpoint(run_dir if run_dir is not None else resolve_run_dir(cfg))
        if path is None:
            return None, None
    else:
        path = Path(resume)
    try:
        state = load_checkpoint(path, map_location="cpu")
    except FileNotFoundError as exc:
        raise ConfigError(f"--resume: no checkpoint file at {path}") from exc
    except CheckpointError as exc:
        raise ConfigError(f"--resume: {exc}") from exc
    where = f"--resume {path}"
    spec = EncoderSpec.from_dict(cfg.model.encoder_spec_dict())
    stored_spec = state.get("encoder_spec")
    if isinstance(stored_spec, dict):
        diff = _spec_differences(stored_spec, spec.to_dict())
        if diff:
            raise ConfigError(f"{where} was written for another encoder: " + "; ".join(diff))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = SSLModel(spec)
    try:
        _check_fits(model, state["model"], f"SSLModel({spec.arch})")
    except StateDictMismatchError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    stored_cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    has_ema = state.get("ema") is not None
    if has_ema != bool(cfg.model.momentum_encoder):
        raise ConfigError(
            f"{where} {'has' if has_ema else 'has no'} momentum encoder but the config sets "
            f"model.momentum_encoder={str(cfg.model.momentum_encoder).lower()}"
        )
    diff = _trajectory_differences(stored_cfg, config_to_dict(cfg))
    if diff:
        raise ConfigError(
            f"{where} was written with other training settings: {'; '.join(diff)}. A resumed "
            "run continues the checkpoint's trajectory (its optimiser state, schedules laid out "
            "for its train.epochs, data order and seed), so these would be ignored or mix two "
            "runs; resume with the run's own settings (its config.yaml), or start a new run in "
            "another train.run_dir"
        )
    return path, state


# Settings that shape a run's trajectory (what it optimises, with which data, schedule and
# seed). Everything else may differ on resume: paths, workers, device/AMP/compile, logging,
# checkpoint frequency, online evaluation, SyncBatchNorm (another GPU count).
_TRAJECTORY_PREFIXES = ("optim.", "loss.", "model.momentum_")
_TRAJECTORY_KEYS = (
    "data.name", "data.preset", "data.view", "data.asymmetric", "data.batch_size",
    "train.epochs", "train.seed", "train.max_steps_per_epoch",
)  # fmt: skip


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in _FREE_FORM:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _trajectory_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key: checkpoint X, config Y`` for each trajectory setting that differs. Keys missing
    from the checkpoint's config (written by an older version) are not compared."""
    old, new = _flatten(stored), _flatten(wanted)
    out = []
    for key in sorted(new):
        if not (key.startswith(_TRAJECTORY_PREFIXES) or key in _TRAJECTORY_KEYS):
            continue
        if key in old and old[key] != new[key]:
            out.append(f"{key}: checkpoint {old[key]!r}, config {new[key]!r}")
    return out


def _check_fresh_run_dir(run_dir: Path) -> None:
    """A new run must not write into a folder holding another run: it would replace last.pt and
    config.yaml, append to metrics.jsonl, and leave the old epoch_*.pt files, which a later
    ``--resume auto`` may pick."""
    from mitools.checkpoint import CHECKPOINT_SUFFIXES

    if not run_dir.is_dir():
        return
    held = sorted(
        p.name
        for p in run_dir.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix in CHECKPOINT_SUFFIXES or p.name == "metrics.jsonl")
    )
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ConfigError(
            f"train.run_dir {run_dir} already holds a run ({shown}); continue it with "
            "--resume auto, or start this one in another folder (--set train.run_dir=...) or "
            "after deleting that one"
        )


def _resume_position(state: dict[str, Any]) -> str:
    """Epoch, step, batch and a float64 sum of the model's floating tensors: tells two
    checkpoint files apart across ranks without sending the weights."""
    weights = sum(
        float(t.double().sum()) for t in state["model"].values() if torch.is_floating_point(t)
    )
    return (
        f"epoch {state.get('epoch')}, step {state.get('step')}, batch "
        f"{state.get('batch_in_epoch', 0)}, weight sum {weights!r}"
    )


def _resume_on_all_ranks(
    cfg: Config, resume: str | None, run_dir: Path, ddp: _Dist
) -> tuple[Path | None, dict[str, Any] | None]:
    """:func:`_check_resume` on every rank, and under DDP the same checkpoint on all of them.

    Each rank reads its own file system. On several nodes without a shared run folder,
    ``--resume auto`` finds the checkpoint on the first node only: the other nodes' ranks would
    start afresh, drift apart from rank 0 (DDP averages gradients, not weights), write nothing
    and hang at the end. So the ranks compare what they found (errors included) and all stop with
    the same one-line error unless every rank holds the same checkpoint."""
    if ddp.world == 1:
        return _check_resume(cfg, resume, run_dir)
    try:
        path, state = _check_resume(cfg, resume, run_dir)
        position = None if state is None else _resume_position(state)
        found = "none found" if path is None else f"{path} ({position})"
    except ConfigError as exc:
        path, state, position, found = None, None, None, f"error: {exc}"
    everyone: list[Any] = [None] * ddp.world
    dist.all_gather_object(everyone, (position, found))
    errors = [f for _, f in everyone if f.startswith("error: ")]
    if len(errors) == ddp.world and len(set(errors)) == 1:
        raise ConfigError(errors[0].removeprefix("error: "))  # the same problem everywhere
    if errors or len({pos for pos, _ in everyone}) > 1:
        seen = "; ".join(f"rank {r}: {f}" for r, (_, f) in enumerate(everyone))
        raise ConfigError(
            f"--resume {resume}: the ranks do not resume from the same checkpoint ({seen}); "
            "on several nodes the run folder (train.run_dir) must be on a file system every "
            "node sees, or each node needs a copy of the same checkpoint"
        )
    return path, state


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def _dataset_errors(cfg: Config, ddp: _Dist) -> Iterator[None]:
    """A missing or broken dataset is a one-line ConfigError naming the rank (under DDP a node
    may lack data that rank 0's preflight found)."""
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f" on rank {ddp.rank} (local rank {ddp.local_rank})" if ddp.world > 1 else ""
        raise ConfigError(f"dataset {cfg.data.name!r} not usable{where}: {msg}") from exc


def _dataset(cfg: Config, split: str, ddp: _Dist, **kwargs: Any):
    """``build_dataset`` for this rank, errors as :func:`_dataset_errors`."""
    from mitools.data.datasets import build_dataset

    with _dataset_errors(cfg, ddp):
        return build_dataset(cfg.data.name, cfg.data.root, split, **kwargs)


def _download_on_every_node(cfg: Config, ddp: _Dist) -> None:
    """``data.download``: rank 0 downloads first, then local rank 0 of every other node (which
    finds the files on a shared file system, or downloads its own node-local copy); the other
    ranks wait. One writer at a time, so nodes never write the same shared files at once.
    Downloading only (``download_dataset``): files already there are not read, so with the
    CLI's preflight download before this one, the splits are read only where they are loaded
    (preflight's checks and training), not by either download."""
    if not cfg.data.download:
        return
    from mitools.data.datasets import download_dataset, get_spec

    spec = get_spec(cfg.data.name)
    splits = sorted({spec.pretrain_split, spec.train_split, spec.eval_split})
    for turn in ("rank 0", "other nodes"):
        if (turn == "rank 0" and ddp.rank == 0) or (
            turn == "other nodes" and ddp.rank != 0 and ddp.local_rank == 0
        ):
            with _dataset_errors(cfg, ddp):
                download_dataset(cfg.data.name, cfg.data.root, splits=splits)
        if ddp.world > 1:
            dist.barrier()


def _init_distributed(device_kind: str) -> _Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _no_buffer_sync() -> dict[str, bool]:
    """DDP without a broadcast of rank 0's buffers (BatchNorm statistics) before every forward:
    each rank keeps its own running statistics, as in the SSL reference code, and skips a
    collective per step. torch 2.13 renamed the option (``broadcast_buffers`` warns). The new
    one still broadcasts the buffers once, at construction; every rank holds the same buffers
    then (same seed, nothing trained yet), so the two spellings train alike."""
    ddp_options = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in ddp_options:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def configure_cuda_backends(cfg: Config) -> None:
    """cuDNN autotuning (off in deterministic mode) and TF32 matmuls/convolutions, as training."""
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the legacy global RNG
    torch.manual_seed(seed)


_NO_TENSORBOARD = (
    "train.tensorboard=true but the tensorboard package is not installed: "
    "pip install tensorboard, or set train.tensorboard=false (metrics.jsonl is always written)"
)


def _check_tensorboard(cfg: Config) -> None:
    if cfg.train.tensorboard:
        try:
            import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        except ImportError as exc:
            raise ConfigError(_NO_TENSORBOARD) from exc


class _Metrics:
    """metrics.jsonl, and TensorBoard events under ``tb/`` with ``train.tensorboard``, on the
    main rank."""

    def __init__(
        self, run_dir: Path, enabled: bool, tensorboard: bool, resumed_step: int | None = None
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and resumed_step is not None:
            self._drop_records_after(resumed_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # preflight names this before work; API callers get it here
                raise ConfigError(_NO_TENSORBOARD) from exc
            # purge_step: TensorBoard hides the events a killed run wrote past the checkpoint
            purge = None if resumed_step is None else resumed_step + 1
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def _drop_records_after(self, step: int) -> None:
        """A run killed after its last checkpoint logged steps that the resumed run repeats:
        drop records past ``step`` (and a line cut by the kill) so each step is logged once."""
        from mitools.checkpoint import atomic_write_text

        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "step")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (those of ``kind`` when given: ``"step"`` or
    ``"epoch"``), in order; a line cut by a crash is skipped, a missing file gives []."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if kind is None or rec.get("kind") == kind:
            records.append(rec)
    return records


def _device_terms(loss_fn: nn.Module, loss: Tensor) -> tuple[list[str], Tensor, dict[str, float]]:
    """The loss and the loss module's scalar ``last_terms``: names, their values stacked on the
    device (float64, no host synchronisation) and the terms that are already Python numbers."""
    names, values, plain = ["loss"], [loss.detach().reshape(())], {}
    for k, v in getattr(loss_fn, "last_terms", {}).items():
        if k == "loss":
            continue
        if isinstance(v, Tensor) and v.numel() == 1:
            names.append(k)
            values.append(v.detach().reshape(()))
        elif isinstance(v, (int, float)):
            plain[k] = float(v)
    # one cast of the stacked terms (stack promotes mixed dtypes), not one launch per term
    return names, torch.stack(values).double(), plain


def _read_back(
    pending: list[tuple[int, list[str], Tensor, dict[str, float]]],
) -> list[tuple[int, dict[str, float]]]:
    """``(step, {name: value})`` for each pending step, in order, with ONE device-to-host copy."""
    flat = torch.cat([values for _, _, values, _ in pending]).tolist()
    rows, at = [], 0
    for step_no, names, _, plain in pending:
        terms = dict(zip(names, flat[at : at + len(names)], strict=True))
        rows.append((step_no, {**terms, **plain}))
        at += len(names)
    return rows


def _first_non_finite(rows: list[tuple[int, dict[str, float]]]):
    return next((row for row in rows if not math.isfinite(row[1]["loss"])), None)


def _non_finite_message(bad, epoch: int, run_dir: Path) -> str:
    where = "on another rank"
    if bad is not None:
        where = f"({bad[1]['loss']}) at epoch {epoch + 1}, step {bad[0]}"
    last = run_dir / "last.pt"
    return (
        f"non-finite loss {where}: stopping; last good checkpoint kept: "
        f"{last if last.exists() else 'none written yet'}"
    )


def _non_finite_weights(model: nn.Module) -> list[str]:
    """Names of the parameters and floating buffers holding NaN/inf (one host sync)."""
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers())
             if t.is_floating_point()]  # fmt: skip
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [n for (n, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


def _non_finite_weights_message(bad: list[str], step: int, run_dir: Path, model: nn.Module) -> str:
    last = run_dir / "last.pt"
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    # parameters go non-finite through the optimiser step; buffers (BatchNorm running
    # statistics) through the forward, when activations overflow (e.g. weights grown huge)
    buffers = {name for name, _ in model.named_buffers()}
    if all(name in buffers for name in bad):
        cause = "activations overflowed in the forward; is the learning rate too high?"
    else:
        cause = "a non-finite gradient with a finite loss"
    return (
        f"non-finite weights ({shown}) found after step {step} ({cause}): stopping without "
        f"writing them; last good checkpoint kept: {last if last.exists() else 'none written yet'}"
    )


def ssl_loss(
    cfg: Config,
    loss_fn: nn.Module,
    out: tuple[Tensor, ...],
    targets: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """The SSL loss of one batch from ``TwoViewModel`` outputs (dispatch in the module doc)."""
    _, _, _, _, p1, p2 = out
    if targets is None:
        return loss_fn(p1, p2)
    t1, t2 = targets
    if cfg.loss.name in ("byol", "mec"):
        return loss_fn(p1, p2, t1, t2)
    return loss_fn(torch.cat([p1, p2]), torch.cat([t2, t1]))


# ----------------------------------------------------------------------------- monitoring


def _materialise_small(dataset, max_samples: int, max_bytes: int = 1 << 28):
    """The evaluated items (those :func:`extract_features` picks) as one in-memory tensor dataset
    when they fit in ``max_bytes``: the online evaluation then skips the per-image eval transform
    every epoch (it was 60-70 % of the evaluation time on digits). Same items, same order."""
    from torch.utils.data import TensorDataset

    from trainers.linear_eval import evenly_spaced_indices

    idx = evenly_spaced_indices(len(dataset), max_samples)
    idx = range(len(dataset)) if idx is None else idx.tolist()
    first = torch.as_tensor(dataset[idx[0]][0])
    if len(idx) * first.numel() * first.element_size() > max_bytes:
        return dataset
    items = [dataset[i] for i in idx]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    return TensorDataset(images, labels)


@torch.no_grad()
def online_eval(cfg, model, probe_sets, device) -> dict[str, float]:
    """Cheap, detached monitoring: kNN / linear probe on backbone features, spectrum of z."""
    from mitools.spectrum import effective_rank, normalized_std
    from trainers.linear_eval import extract_features, knn_accuracy, linear_probe

    train_ds, val_ds = probe_sets
    e = cfg.eval
    kw = dict(batch_size=e.batch_size, device=device, max_samples=e.max_samples)
    tr_x, tr_y = extract_features(model.backbone, train_ds, **kw)
    va_x, va_y = extract_features(model.backbone, val_ds, **kw)
    keep = tr_y >= 0
    tr_x, tr_y = tr_x[keep], tr_y[keep]
    out: dict[str, float] = {}
    if e.knn:
        out["knn_top1"] = knn_accuracy(
            tr_x, tr_y, va_x, va_y, k=e.knn_k, temperature=e.knn_temperature
        )
    if e.linear_probe:
        out["probe_top1"] = linear_probe(
            tr_x, tr_y, va_x, va_y, steps=e.probe_steps, weight_decay=e.probe_weight_decay
        )
    was = model.training
    model.eval()
    z = torch.cat([model.projector(va_x[i : i + e.batch_size].to(device)).float().cpu()
                   for i in range(0, va_x.shape[0], e.batch_size)])  # fmt: skip
    model.train(was)
    out["feat_effective_rank"] = effective_rank(va_x)
    out["proj_effective_rank"] = effective_rank(z)
    out["proj_normalized_std"] = normalized_std(z)
    out["proj_normalized_std_healthy"] = 1.0 / math.sqrt(z.shape[1])
    return out


# ----------------------------------------------------------------------------- training


@contextlib.contextmanager
def _torch_settings_restored() -> Iterator[None]:
    """Process-wide torch settings that a run changes (deterministic algorithms, cuDNN autotuning,
    TF32) are put back when it returns or raises: ``train`` is also called from notebooks and
    analyses, whose later work must not silently run deterministic or with TF32 matmuls."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.cuda.matmul.allow_tf32 = saved[3]
        torch.backends.cudnn.allow_tf32 = saved[4]


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Run pre-training; returns a summary (run folder, epochs, last metrics, interrupted).

    Global torch settings the run needs (``train.deterministic``, cuDNN/TF32 on CUDA) hold only
    while it runs; the caller's are restored afterwards."""
    with _torch_settings_restored():
        return _train(cfg, resume)


def _train(cfg: Config, resume: str | None) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from mitools.checkpoint import (
        GracefulExit,
        capture_rng_state,
        mitools_version,
        restore_rng_state,
        save_checkpoint,
    )
    from mitools.data.augment import (
        BatchAugment,
        CudaGraphAugment,
        TwoViewTransform,
        loader_transform,
    )
    from mitools.data.datasets import get_spec
    from mitools.models import EncoderSpec, MomentumEncoder, cosine_momentum
    from mitools.optim import WarmupCosineLR

    # --- device, distributed, determinism
    use_cuda = cfg.train.device == "cuda" or (
        cfg.train.device == "auto" and torch.cuda.is_available()
    )
    ddp = _init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device(f"cuda:{ddp.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        configure_cuda_backends(cfg)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    amp = cfg.train.amp if cfg.train.amp != "auto" else ("bf16" if use_cuda else "off")
    check_every = cfg.train.check_every_steps or (50 if use_cuda else 1)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    channels_last = use_channels_last(cfg, device)
    if cfg.data.batch_size % ddp.world:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} not divisible by {ddp.world} ranks"
        )
    local_batch = cfg.data.batch_size // ddp.world
    run_dir = resolve_run_dir(cfg)
    ckpt_path, ckpt_state = _resume_on_all_ranks(cfg, resume or None, run_dir, ddp)  # before work
    _check_tensorboard(cfg)
    show = cfg.train.progress and ddp.main and progress_enabled()

    # --- data: unaugmented tensors; two views made on the device (batch) or in workers
    dspec = get_spec(cfg.data.name)
    _download_on_every_node(cfg, ddp)
    preset = build_augment_preset(cfg)
    mode = cfg.data.augment  # batch: all on the device; hybrid: workers crop, the device colours
    batch_aug = BatchAugment(preset).to(device) if mode in ("batch", "hybrid") else None
    if mode == "batch":
        pre_tf = loader_transform(cfg.data.name)
    else:  # workers: both views whole; hybrid: their crops only
        pre_tf = TwoViewTransform(preset, photometric=mode == "workers")
    train_set = _dataset(cfg, dspec.pretrain_split, ddp, transform=pre_tf)
    sampler = EpochBatchSampler(len(train_set), local_batch, cfg.train.seed, ddp.rank, ddp.world)
    # Private generator for the loader's worker seeds, re-seeded per (epoch, rank): creating an
    # iterator then leaves the global RNG (augmentation, stored in checkpoints) untouched.
    loader_gen = torch.Generator()
    on_device = cfg.data.on_device
    if on_device is None:
        on_device = (
            use_cuda and mode == "batch" and _dataset_gib(train_set) <= cfg.data.on_device_max_gib
        )
    if on_device:
        images = materialise_on_device(train_set, device, cfg.data.num_workers)
        loader = DeviceResidentLoader(images, sampler)
    else:
        loader = DataLoader(
            train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
            pin_memory=cfg.data.pin_memory and use_cuda, persistent_workers=False,
            generator=loader_gen,
        )  # fmt: skip
    augment = None  # workers: the loader yields the finished views
    if batch_aug is not None:
        augment = batch_aug if mode == "batch" else batch_aug.photometric
    graph_aug = cfg.data.augment_graph if cfg.data.augment_graph is not None else use_cuda
    if augment is not None and graph_aug and use_cuda:
        augment = CudaGraphAugment(augment)
    probe_sets = None
    if cfg.eval.every_epochs > 0 and ddp.main:
        from mitools.data.augment import eval_transform

        tf = eval_transform(cfg.data.name)
        probe_sets = tuple(
            _materialise_small(
                _dataset(cfg, split, ddp, transform=tf),
                cfg.eval.max_samples,
            )
            for split in (dspec.train_split, dspec.eval_split)
        )

    # --- model (same init on every rank), DDP wrapper, EMA target, loss, optimiser, schedule
    _seed_all(cfg.train.seed)
    spec = EncoderSpec.from_dict(cfg.model.encoder_spec_dict())
    model = build_online_model(cfg, device, ddp.world, channels_last)
    net: nn.Module = TwoViewModel(model)
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if use_cuda else None, **_no_buffer_sync()
        )
    target = (
        MomentumEncoder(model, buffers=cfg.model.momentum_buffers)
        if cfg.model.momentum_encoder
        else None
    )
    loss_fn = build_loss_from_config(cfg, ddp.world).to(device)
    fwd = torch.compile(net) if cfg.train.compile else net
    # the compiled loss shares the module's buffers and replays its attribute writes (last_terms)
    loss_call = torch.compile(loss_fn) if cfg.train.compile_loss else loss_fn
    steps_per_epoch = len(sampler)
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = cfg.train.epochs * steps_per_epoch
    o = cfg.optim
    optimizer = build_optimizer_from_config(cfg, model)
    scheduler = WarmupCosineLR(
        optimizer, total_steps, min(total_steps, round(o.warmup_epochs * steps_per_epoch)),
        final_lr_ratio=o.final_lr_ratio, warmup_start_ratio=o.warmup_start_ratio,
    )  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    _seed_all(cfg.train.seed + ddp.rank)  # different augmentations per rank

    # --- resume
    epoch, step, batch_in_epoch = 0, 0, 0
    # --resume auto with no checkpoint starts over: records of a run killed before its first
    # checkpoint are dropped like those past a checkpoint
    resumed_step = 0 if resume == "auto" else None
    if ckpt_state is not None:
        state = ckpt_state  # read once (on the CPU) by the check; load_state_dict copies over
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if target is not None and state.get("ema") is not None:
            target.load_state_dict(state["ema"])
        if state.get("loss_state"):
            loss_fn.load_state_dict(state["loss_state"])
        epoch, step = int(state["epoch"]), int(state["step"])
        batch_in_epoch = int(state.get("batch_in_epoch", 0))
        if ddp.world == int(state.get("world_size", 1)) and state.get("rng_per_rank"):
            restore_rng_state(state["rng_per_rank"][ddp.rank])
        if ddp.main:
            done = "; the run is complete, nothing to train" if epoch >= cfg.train.epochs else ""
            print(f"resumed from {ckpt_path} (epoch {epoch}, step {step}){done}", file=sys.stderr)
        resumed_step = step
        del state, ckpt_state  # the loaded copies live in the modules now (CPU memory back)

    def checkpoint(name: str, batch_done: int) -> Path | None:
        # the loss is checked every read-back, but a non-finite gradient with a finite loss
        # reaches only the weights: never let it replace the last good checkpoint
        bad_weights = _non_finite_weights(model)
        if ddp.world > 1:
            flag = torch.tensor([float(bool(bad_weights))], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and not bad_weights:
                bad_weights = ["on another rank"]
        if bad_weights:
            raise NonFiniteLossError(_non_finite_weights_message(bad_weights, step, run_dir, model))
        rngs = [capture_rng_state()]
        if ddp.world > 1:
            rngs = [None] * ddp.world
            dist.all_gather_object(rngs, capture_rng_state())
        if not ddp.main:
            return None
        return save_checkpoint(run_dir / name, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": None if target is None else target.state_dict(),
            "loss_state": loss_fn.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
            "world_size": ddp.world, "epoch": epoch, "step": step, "batch_in_epoch": batch_done,
            "config": config_to_dict(cfg), "encoder_spec": spec.to_dict(),
            "mitools_version": mitools_version(),
        })  # fmt: skip

    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    metrics = _Metrics(run_dir, ddp.main, cfg.train.tensorboard, resumed_step)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    summary: dict[str, Any] = {"run_dir": str(run_dir), "interrupted": False, "epoch_metrics": []}
    mec_lamda = None
    if cfg.loss.name == "mec" and cfg.loss.mec_warmup_epochs > 0:
        from mitools.losses import mec_lamda_inv

        d = model.projection_dim
        mec_lamda = (d / (cfg.data.batch_size * cfg.loss.params.get("eps", 64.0)), mec_lamda_inv)

    # --- the loop
    with GracefulExit() as stop:
        while epoch < cfg.train.epochs:
            net.train()
            loss_fn.train()
            sampler.set_epoch(epoch, batch_in_epoch)
            loader_gen.manual_seed((cfg.train.seed * 1_000_003 + epoch) * 4099 + ddp.rank)
            n_steps = steps_per_epoch - batch_in_epoch
            bar = None
            if show:
                bar = progress(total=n_steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
            t0, seen, sums = time.perf_counter(), 0, {}
            pending: list[tuple[int, list[str], Tensor, dict[str, float]]] = []
            # islice: a capped epoch (max_steps_per_epoch) never loads and augments a batch
            # it does not train on
            for i, (batch, _) in enumerate(itertools.islice(loader, n_steps)):
                if mode == "batch":
                    x1, x2 = augment(batch.to(device, non_blocking=True))
                else:
                    x1, x2 = (v.to(device, non_blocking=True) for v in batch)
                    if mode == "hybrid":
                        x1, x2 = augment(x1, x2)
                if channels_last:
                    x1 = x1.contiguous(memory_format=torch.channels_last)
                    x2 = x2.contiguous(memory_format=torch.channels_last)
                if mec_lamda is not None:
                    warm = cfg.loss.mec_warmup_epochs * steps_per_epoch
                    loss_fn.lamda_inv = mec_lamda[1](step, warm, mec_lamda[0])
                try:
                    with autocast:
                        out = fwd(x1, x2)
                        targets = None
                        if target is not None:
                            targets = (target(x1)[1], target(x2)[1])
                        loss = ssl_loss(cfg, loss_call, out, targets)
                except (ValueError, RuntimeError) as exc:
                    # a non-finite loss not yet read back poisons the weights, and the next
                    # forward may fail first (NaN inputs to the loss): report the real cause
                    bad = _first_non_finite(_read_back(pending)) if pending else None
                    if bad is not None:
                        raise NonFiniteLossError(_non_finite_message(bad, epoch, run_dir)) from exc
                    bad_weights = _non_finite_weights(model)
                    if bad_weights:
                        raise NonFiniteLossError(
                            _non_finite_weights_message(bad_weights, step, run_dir, model)
                        ) from exc
                    raise
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if o.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                step_lr = scheduler.get_last_lr()[0]  # the rate of this step (logged)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if target is not None:
                    m = cosine_momentum(
                        step, total_steps, cfg.model.momentum_base, cfg.model.momentum_final
                    )
                    target.update(model, m)
                # The loss and its terms stay on the device until the next read-back: reading
                # them every step would stall the CUDA launch queue once per step.
                pending.append((step, *_device_terms(loss_fn, loss)))
                step += 1
                seen += x1.shape[0] * ddp.world
                if bar is not None:
                    bar.update(1)
                log_now = cfg.train.log_every_steps > 0 and step % cfg.train.log_every_steps == 0
                if not (
                    log_now
                    or i + 1 == n_steps
                    or len(pending) >= check_every
                    or (ddp.world == 1 and stop.requested)
                ):
                    continue
                # --- read-back: non-finite check (before any checkpoint), sums, logs, signals
                rows = _read_back(pending)
                pending.clear()
                first_bad = _first_non_finite(rows)
                flags = [float(first_bad is not None), float(stop.requested)]
                if ddp.world > 1:
                    flags_t = torch.tensor(flags, device=device)
                    dist.all_reduce(flags_t, op=dist.ReduceOp.MAX)
                    flags = flags_t.tolist()
                if flags[0] > 0:
                    raise NonFiniteLossError(_non_finite_message(first_bad, epoch, run_dir))
                stop_now = flags[1] > 0
                for _, terms in rows:
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v
                ips = seen / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", img_s=f"{ips:.0f}")
                if ddp.main and log_now:
                    rec = {"kind": "step", "epoch": epoch, "step": step,
                           "lr": step_lr, "images_per_s": ips, **terms}  # fmt: skip
                    metrics.log(rec, step)
                if stop_now:
                    path = checkpoint("last.pt", batch_in_epoch + i + 1)
                    if ddp.main:
                        print(
                            f"signal {stop.signal_name or ''}: checkpoint {path}", file=sys.stderr
                        )
                    summary["interrupted"] = True
                    # the signal another rank received (flags are combined, names are not)
                    summary["signal"] = stop.signal_name or "SIGTERM"
                    break
            if bar is not None:
                bar.close()
            if summary["interrupted"]:
                break
            n_done = max(n_steps, 1)
            epoch += 1
            batch_in_epoch = 0
            rec = {"kind": "epoch", "epoch": epoch, "step": step,
                   "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                   **{f"mean_{k}": v / n_done for k, v in sums.items()}}  # fmt: skip
            # checkpoint first: a hard kill during a long evaluation (ImageNet-100: minutes on
            # rank 0) then loses only the evaluation, not the epoch
            checkpoint("last.pt", 0)
            k = cfg.train.checkpoint_every_epochs
            if k > 0 and epoch % k == 0:
                checkpoint(f"epoch_{epoch:04d}.pt", 0)
            if probe_sets is not None and epoch % cfg.eval.every_epochs == 0:
                # Monitoring must not change training: its loaders draw from the global RNG,
                # which the augmentations also use, so it runs on a forked stream.
                rng_devices = [device.index or 0] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=rng_devices):
                    rec.update(online_eval(cfg, model, probe_sets, device))
            if ddp.main:
                metrics.log(rec, step)
                summary["epoch_metrics"].append(rec)
    metrics.close()
    summary.update(epoch=epoch, step=step)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.pretrain", description="MI-based SSL pre-training"
    )
    parser.add_argument("--config", default=None, help="YAML config (default: digits + EMI)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.5 (repeatable)")  # fmt: skip
    parser.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint) or a path")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.set)
        if int(os.environ.get("RANK", "0")) == 0:
            preflight(cfg, args.resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg, args.resume)
    except ConfigError as exc:  # a problem only a non-zero rank could see
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    last = summary["epoch_metrics"][-1] if summary["epoch_metrics"] else {}
    if int(os.environ.get("RANK", "0")) == 0:
        # the run's own position last: an interrupted run stopped after its last epoch record
        print(json.dumps({**last, "run_dir": summary["run_dir"], "epoch": summary["epoch"],
                          "step": summary["step"], "interrupted": summary["interrupted"]}))  # fmt: skip
    if summary["interrupted"]:
        # as a process killed by the signal (130 SIGINT, 143 SIGTERM): `pretrain && eval`
        # chains and job scripts must not take the checkpointed, unfinished run for a finished one
        return 128 + int(signal.Signals[summary["signal"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
