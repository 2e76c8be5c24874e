"""Frozen-backbone evaluation: linear probe and weighted cosine kNN.

``python -m trainers.linear_eval --checkpoint CKPT [--protocol augmented|cached] [--data NAME]
[--root DIR] [--labels-per-class N] [--out results.json]``

Protocol (stated, as every option here):

* Features. The backbone (no projector) of the checkpoint's encoder, rebuilt from the stored
  ``encoder_spec`` (no config file needed), in eval mode (BN running statistics). Evaluation
  features (and every kNN feature) come from the probe splits of the dataset
  (``DatasetSpec.train_split`` / ``eval_split``) WITHOUT augmentation
  (``mitools.data.augment.eval_transform``: conversion + normalisation; ImageNet-100 resize 256 /
  centre-crop 224).
* ``--protocol augmented`` (the CLI default): the standard linear protocol (solo-learn, MoCo v3):
  the linear classifier ``W h + b`` is trained with mini-batch SGD (momentum 0.9, lr 0.1 cosine,
  100 epochs, batch 256, weight decay 0 by default) on features of freshly augmented training
  images every epoch (random resized crop scale (0.08, 1) + flip;
  :func:`mitools.data.augment.probe_train_transform`), standardised with the mean/std of the
  first epoch's features, and tested on the eval transform. One backbone pass over the training
  set per epoch; see :func:`augmented_linear_probe`.
* ``--protocol cached`` (fast; the default of :func:`evaluate_backbone`, which analysis code
  uses): features computed once with no augmentation during probe training (a documented
  simplification of the protocol above), standardised with the training-set mean/std, then
  multinomial logistic regression with L2 penalty ``weight_decay/2 ||W||^2`` (1e-4 by default)
  trained full-batch with L-BFGS (``solver="lbfgs"``, default, deterministic) or mini-batch SGD
  momentum 0.9 with cosine lr (``solver="sgd"``); see :func:`linear_probe`.
* Either way: top-1 accuracy on the evaluation split; the JSON of the CLI records the protocol,
  the solver and the weight decay used.
* kNN (Wu et al. 2018 InstDisc; solo-learn): L2-normalised features, the k nearest training
  features by cosine similarity s, each votes for its class with weight ``exp(s / T)``;
  k = 200, T = 0.07 by default (k is capped at the number of training samples; the CLI says so
  on stderr when it applies, e.g. ``--labels-per-class 10`` on digits leaves 100).
* ``labels_per_class`` N: the probe/kNN training set is the first N images of each class under a
  permutation drawn from ``numpy.random.default_rng(seed)`` (the evaluation split is untouched).

Bad input (missing or corrupt checkpoint, a folder given as checkpoint, unknown dataset, a dataset
whose channel count differs from the checkpoint encoder's ``in_channels``, non-positive counts, an
output path that cannot be written, ...) is a one-line ``error: ...`` on stderr and exit status 2,
before any evaluation runs; a dataset missing under ``--root`` is reported the same way when it is
first opened, before any feature is computed (linear_eval never downloads). A plain state dict
(no ``encoder_spec``) is refused with a pointer to ``python -m mitools.diagnose --arch``. Options
that the chosen protocol does not use (``--epochs`` with cached; ``--lr`` with cached L-BFGS;
``--solver`` / ``--steps`` with augmented) are named in a one-line warning on stderr.

Output: the JSON (stdout, and ``--out`` if given) holds ``checkpoint``, ``data``, ``epoch`` (of
the checkpoint), ``seed`` (label subset, augmentations, probe order), ``ema`` (true: the momentum
encoder's weights were evaluated, not the online encoder's) and the :class:`ProbeResult` fields.
``--out`` is written atomically with :func:`mitools.checkpoint.atomic_write_text` (temporary file
in the same folder, then ``os.replace``; mode ``0o666 & ~umask`` as for a normally created file).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LabelsPerClassError",
    "ProbeResult",
    "extract_features",
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
    "augmented_linear_probe",
    "subsample_per_class",
    "evaluate_backbone",
    "default_weight_decay",
    "main",
]

PROTOCOLS = ("augmented", "cached")


class LabelsPerClassError(ValueError):
    """``labels_per_class`` exceeds the images of a class in the training split; ``detail`` says
    which class and how many it has."""

    def __init__(self, labels_per_class: int, detail: str) -> None:
        super().__init__(f"labels_per_class={labels_per_class}: {detail}")
        self.detail = detail


@dataclass
class ProbeResult:
    """Accuracies in percent (top-1) on the evaluation split."""

    linear_top1: float | None
    knn_top1: float | None
    n_train: int
    n_eval: int
    feature_dim: int
    labels_per_class: int | None
    knn_k: int
    knn_temperature: float
    solver: str
    protocol: str = "cached"
    weight_decay: float | None = None  # of the linear probe (None: no linear probe was trained)
    epochs: int | None = None  # augmented protocol: SGD epochs
    steps: int | None = None  # cached protocol: L-BFGS iterations / SGD epochs
    lr: float | None = None  # SGD learning rate (augmented, or cached with solver "sgd")


def evenly_spaced_indices(n: int, max_samples: int | None) -> np.ndarray | None:
    """``max_samples`` evenly spaced indices of ``range(n)`` (deterministic), or None when all
    ``n`` items fit: the subset every evaluation here uses."""
    if max_samples is None or n <= max_samples:
        return None
    return np.linspace(0, n - 1, max_samples).round().astype(np.int64)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    max_samples: int | None = None,
    num_workers: int = 0,
    indices: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """Backbone features (float32, on CPU) and int64 labels of ``dataset`` (in order).

    The backbone is put in eval mode for the pass and its previous mode restored. ``max_samples``
    keeps an evenly spaced subset (deterministic); ``indices`` selects explicit items.
    """
    from torch.utils.data import DataLoader, Subset

    if indices is None:
        indices = evenly_spaced_indices(len(dataset), max_samples)
    if indices is not None:
        dataset = Subset(dataset, [int(i) for i in indices])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for x, y in loader:
            h = backbone(x.to(device, non_blocking=True))
            feats.append(h.float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.int64))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Weighted cosine kNN labels (InstDisc): votes ``exp(cos / T)`` of the k nearest."""
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"features must be (n, d) with equal d, got {tuple(train_x.shape)}, {tuple(test_x.shape)}"
        )
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"{train_x.shape[0]} training features but {train_y.shape[0]} labels")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = int(train_y.max()) + 1 if num_classes is None else int(num_classes)
    k = max(1, min(int(k), train_x.shape[0]))
    bank = F.normalize(train_x.float(), dim=1)
    preds = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], c, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k=200, temperature=0.07) -> float:
    """Top-1 (%) of :func:`knn_predict`."""
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature)
    return float((pred == test_y).double().mean() * 100.0)


def _sgd_epoch(
    opt: torch.optim.Optimizer,
    w: Tensor,
    b: Tensor,
    x: Tensor,
    y: Tensor,
    gen: torch.Generator,
    batch_size: int,
    lr: float,
    weight_decay: float,
    it: int,
    total: int,
) -> int:
    """One pass of mini-batch SGD on ``CE(x W + b) + weight_decay/2 ||W||^2`` in a random order,
    lr cosine-annealed from ``lr`` over ``total`` steps; returns the updated step count ``it``."""
    perm = torch.randperm(x.shape[0], generator=gen)
    with torch.enable_grad():
        for start in range(0, x.shape[0], batch_size):
            sel = perm[start : start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
            opt.zero_grad()
            loss = F.cross_entropy(x[sel] @ w + b, y[sel]) + 0.5 * weight_decay * (w * w).sum()
            loss.backward()
            opt.step()
            it += 1
    return it


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    solver: str = "lbfgs",
    steps: int = 100,
    weight_decay: float = 1e-4,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
) -> float:
    """Top-1 (%) of a multinomial logistic regression on standardised frozen features.

    ``lbfgs``: full batch, ``steps`` L-BFGS iterations (strong Wolfe line search) on
    ``CE + weight_decay/2 ||W||^2``. ``sgd``: ``steps`` epochs of mini-batch SGD (momentum 0.9,
    cosine lr from ``lr``, weight decay on W). Uses a private generator (global RNG untouched).
    """
    if solver not in ("lbfgs", "sgd"):
        raise ValueError(f"solver must be 'lbfgs' or 'sgd', got {solver!r}")
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (test_x.double() - mean) / std
    c = int(max(train_y.max(), test_y.max())) + 1 if num_classes is None else int(num_classes)
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(x.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        if solver == "lbfgs":
            opt = torch.optim.LBFGS(
                [w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
            )

            def closure() -> Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(x @ w + b, train_y) + 0.5 * weight_decay * (w * w).sum()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.SGD([w, b], lr=lr, momentum=0.9)
            total = steps * max(1, math.ceil(x.shape[0] / batch_size))
            it = 0
            for _ in range(steps):
                it = _sgd_epoch(opt, w, b, x, train_y, gen, batch_size, lr, weight_decay, it, total)
    with torch.no_grad():
        pred = (xt @ w + b).argmax(1)
    return float((pred == test_y).double().mean() * 100.0)


def augmented_linear_probe(
    backbone: nn.Module,
    train_dataset: Any,
    test_x: Tensor,
    test_y: Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_classes: int | None = None,
    num_workers: int = 0,
    standardize: bool = True,
    progress: bool = True,
) -> float:
    """Top-1 (%) of the standard linear protocol: the classifier sees fresh augmentations each epoch.

    ``train_dataset`` must apply the random training transform (e.g.
    :func:`mitools.data.augment.probe_train_transform`); ``test_x`` are eval-transform features.
    Every epoch the frozen backbone (eval mode) embeds one fresh augmentation of every training
    image, then ``W h + b`` takes mini-batch SGD steps (momentum 0.9, cosine lr from ``lr`` over
    all steps, L2 ``weight_decay/2 ||W||^2``) over that epoch's features in random order: the same
    distribution of (augmentation, step) pairs as interleaving embedding and steps. With
    ``standardize`` the features are standardised with the mean/std of the first epoch's
    (augmented) features. Randomness (augmentations, order) comes from ``seed``; the global RNG is
    restored afterwards.
    """
    from torch.utils.data import DataLoader

    from mitools.progress import progress as progress_bar

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_dataset, batch_size=512, shuffle=False, num_workers=num_workers)
        w = b = opt = None
        mean = std = None
        total = it = 0
        was_training = backbone.training
        backbone.eval()
        try:
            for _ in progress_bar(
                range(epochs), desc="probe epochs", disable=None if progress else True
            ):
                with torch.no_grad():
                    feats, labels = [], []
                    for x, y in loader:
                        feats.append(backbone(x.to(device)).double().cpu())
                        labels.append(torch.as_tensor(y, dtype=torch.int64))
                x_all, y_all = torch.cat(feats), torch.cat(labels)
                keep = y_all >= 0
                x_all, y_all = x_all[keep], y_all[keep]
                if w is None:
                    if standardize:
                        mean, std = x_all.mean(0), x_all.std(0).clamp_min(1e-6)
                    else:
                        mean, std = torch.zeros(x_all.shape[1]), torch.ones(x_all.shape[1])
                    mean, std = mean.double(), std.double()
                    c = (
                        int(max(y_all.max(), test_y.max())) + 1
                        if num_classes is None
                        else int(num_classes)
                    )
                    w = torch.zeros(x_all.shape[1], c, dtype=torch.float64, requires_grad=True)
                    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
                    opt = torch.optim.SGD([w, b], lr=lr, momentum=0.9)
                    total = epochs * max(1, math.ceil(x_all.shape[0] / batch_size))
                x_all = (x_all - mean) / std
                it = _sgd_epoch(
                    opt, w, b, x_all, y_all, gen, batch_size, lr, weight_decay, it, total
                )
        finally:
            backbone.train(was_training)
    with torch.no_grad():
        pred = (((test_x.double() - mean) / std) @ w + b).argmax(1)
    return float((pred == test_y).double().mean() * 100.0)


def subsample_per_class(labels: np.ndarray | Tensor, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n_per_class`` items of every class (random, ``default_rng(seed)``).
    :class:`LabelsPerClassError` names the smallest class when it has fewer."""
    y = np.asarray(labels)
    classes, counts = np.unique(y[y >= 0], return_counts=True)
    smallest = int(np.argmin(counts))
    if counts[smallest] < n_per_class:
        have = int(counts[smallest])
        raise LabelsPerClassError(
            n_per_class,
            f"class {classes[smallest]} has only {have} items, fewer than {n_per_class}; use at "
            f"most {have}",
        )
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(y == cls))[:n_per_class] for cls in classes]
    return np.sort(np.concatenate(out))


def _dataset_labels(dataset: Any) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets)
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


# read from the probe functions' signatures once, at import, so the two cannot drift apart
_DEFAULT_WEIGHT_DECAY = {
    name: float(inspect.signature(fn).parameters["weight_decay"].default)
    for name, fn in (("cached", linear_probe), ("augmented", augmented_linear_probe))
}


def default_weight_decay(protocol: str) -> float:
    """The probe weight decay used when none is given: the default of the protocol's probe
    function (``cached``: :func:`linear_probe`, 1e-4; ``augmented``:
    :func:`augmented_linear_probe`, 0.0)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'cached' or 'augmented', got {protocol!r}")
    return _DEFAULT_WEIGHT_DECAY[protocol]


def evaluate_backbone(
    backbone: nn.Module,
    data: str,
    root: str | None = None,
    *,
    labels_per_class: int | None = None,
    knn_k: int = 200,
    knn_temperature: float = 0.07,
    solver: str = "lbfgs",
    steps: int = 100,
    weight_decay: float | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
    linear: bool = True,
    knn: bool = True,
    num_workers: int = 0,
    protocol: str = "cached",
    epochs: int = 100,
    lr: float = 0.1,
) -> ProbeResult:
    """Probe a frozen backbone on dataset ``data`` (protocols in the module docstring).

    ``protocol="cached"``: features computed once without augmentation, L-BFGS/SGD probe
    (``solver``, ``steps``). ``"augmented"``: the standard protocol of
    :func:`augmented_linear_probe` (fresh random crops every epoch; ``epochs``, ``lr``,
    ``weight_decay``). ``weight_decay=None``: :func:`default_weight_decay` of the protocol (1e-4
    cached, 0.0 augmented). kNN always uses the unaugmented features.
    """
    from mitools.data.augment import eval_transform, probe_train_transform
    from mitools.data.datasets import build_dataset, get_spec

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'cached' or 'augmented', got {protocol!r}")
    if weight_decay is None:
        weight_decay = default_weight_decay(protocol)
    spec = get_spec(data)
    tf = eval_transform(data)
    train_ds = build_dataset(data, root, spec.train_split, transform=tf)
    eval_ds = build_dataset(data, root, spec.eval_split, transform=tf)
    idx = None
    if labels_per_class is not None:
        idx = subsample_per_class(_dataset_labels(train_ds), labels_per_class, seed)
    backbone = backbone.to(device)
    kw = dict(batch_size=batch_size, device=device, num_workers=num_workers)
    tr_x, tr_y = extract_features(backbone, train_ds, indices=idx, max_samples=max_train, **kw)
    ev_x, ev_y = extract_features(backbone, eval_ds, max_samples=max_eval, **kw)
    keep = tr_y >= 0
    tr_x, tr_y = tr_x[keep], tr_y[keep]
    lin = None
    if linear and protocol == "cached":
        lin = linear_probe(
            tr_x, tr_y, ev_x, ev_y, solver=solver, steps=steps, weight_decay=weight_decay,
            seed=seed, num_classes=spec.num_classes,
        )  # fmt: skip
    elif linear:
        from torch.utils.data import Subset

        aug_ds = build_dataset(data, root, spec.train_split, transform=probe_train_transform(data))
        keep_idx = idx if idx is not None else evenly_spaced_indices(len(aug_ds), max_train)
        if keep_idx is not None:
            aug_ds = Subset(aug_ds, [int(i) for i in keep_idx])
        lin = augmented_linear_probe(
            backbone, aug_ds, ev_x, ev_y, epochs=epochs, lr=lr, batch_size=min(256, len(aug_ds)),
            weight_decay=weight_decay, device=device, seed=seed, num_classes=spec.num_classes,
            num_workers=num_workers,
        )  # fmt: skip
    kacc = (
        knn_accuracy(tr_x, tr_y, ev_x, ev_y, k=knn_k, temperature=knn_temperature) if knn else None
    )
    return ProbeResult(
        lin, kacc, int(tr_x.shape[0]), int(ev_x.shape[0]), int(tr_x.shape[1]), labels_per_class,
        min(knn_k, int(tr_x.shape[0])), knn_temperature,
        solver if protocol == "cached" else "sgd-augmented", protocol,
        float(weight_decay) if linear else None,
        int(epochs) if linear and protocol == "augmented" else None,
        int(steps) if linear and protocol == "cached" else None,
        float(lr) if linear and (protocol == "augmented" or solver == "sgd") else None,
    )  # fmt: skip


def load_backbone(checkpoint: str | os.PathLike, *, ema: bool = False) -> tuple[nn.Module, dict]:
    """Backbone rebuilt from a trainer checkpoint (``encoder_spec`` + weights, weights_only).

    A folder raises IsADirectoryError naming it (and its ``last.pt``, the trainer's latest
    checkpoint, when there is one); a missing file FileNotFoundError; an unusable checkpoint
    ValueError (:class:`mitools.checkpoint.CheckpointError`, or a state dict for another
    architecture). ``ema=True`` loads the momentum encoder's weights (ValueError if none stored).
    """
    from mitools.checkpoint import CheckpointError, load_checkpoint
    from mitools.models import build_encoder_from_checkpoint_dict

    if Path(checkpoint).is_dir():
        last = Path(checkpoint) / "last.pt"
        hint = (
            f"; did you mean {last}?"
            if last.is_file()
            else "; pass a checkpoint file (the trainer writes RUN_DIR/last.pt)"
        )
        raise IsADirectoryError(f"{checkpoint} is a directory, not a checkpoint file{hint}")
    state = load_checkpoint(checkpoint, map_location="cpu", required=())
    missing = [k for k in ("model", "encoder_spec") if k not in state]
    if missing:
        plain = state.get("state_dict", state)
        if isinstance(plain, dict) and plain and all(isinstance(v, Tensor) for v in plain.values()):
            raise CheckpointError(
                f"{checkpoint}: a plain state dict ({len(plain)} tensors), not a trainer "
                "checkpoint (no 'encoder_spec' to rebuild the encoder from); linear_eval needs a "
                f"trainer checkpoint; for a state dict run: python -m mitools.diagnose "
                f"{checkpoint} --arch ARCH --data NAME"
            )
        raise CheckpointError(
            f"{checkpoint}: missing required keys {missing} (has {sorted(state)[:12]})"
        )
    weights = state["model"]
    if ema:
        if not state.get("ema"):
            raise ValueError(f"{checkpoint}: no momentum-encoder weights (ema) stored")
        weights = state["ema"]
    backbone = build_encoder_from_checkpoint_dict(
        state["encoder_spec"], weights, backbone_only=True
    )
    return backbone, state


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the numeric / device options, as a message, or None."""
    positive = {"--epochs": args.epochs, "--steps": args.steps, "--knn-k": args.knn_k,
                "--batch-size": args.batch_size}  # fmt: skip
    if args.labels_per_class is not None:
        positive = {"--labels-per-class": args.labels_per_class, **positive}
    for flag, value in positive.items():
        if value < 1:
            return f"{flag} must be >= 1, got {value}"
    for flag, value in (("--lr", args.lr), ("--knn-temperature", args.knn_temperature)):
        if not (math.isfinite(value) and value > 0):
            return f"{flag} must be a finite number > 0, got {value}"
    if args.weight_decay is not None and not (
        math.isfinite(args.weight_decay) and args.weight_decay >= 0
    ):
        return f"--weight-decay must be a finite number >= 0, got {args.weight_decay}"
    if args.num_workers < 0:
        return f"--num-workers must be >= 0, got {args.num_workers}"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device}: CUDA is not available on this machine; use --device cpu"
    return None


def _check_out_path(out: str) -> str | None:
    """Make ``out``'s folder (parents too) and check that a file can be created there; the problem
    as a message naming the path, or None. Runs before any evaluation."""
    from mitools.checkpoint import folder_write_problem

    path = Path(out).expanduser()
    if path.is_dir():
        return f"--out {out}: is a directory, expected a JSON file path"
    problem = folder_write_problem(path.parent)
    return None if problem is None else f"--out {out}: folder {path.parent.absolute()}: {problem}"


def _channel_mismatch(state: dict, data: str, spec: Any) -> str | None:
    """The checkpoint encoder's ``in_channels`` against dataset ``data``'s channels, as a message
    naming both, or None when they agree. Runs before any data is read."""
    from mitools.models import EncoderSpec

    in_channels = EncoderSpec.from_dict(state["encoder_spec"]).in_channels
    if in_channels == spec.channels:
        return None
    return (
        f"the checkpoint's encoder takes {in_channels}-channel images (encoder_spec.in_channels="
        f"{in_channels}) but dataset {data!r} has {spec.channels} channels; evaluate it on a "
        f"{in_channels}-channel dataset (the one it was trained on: omit --data)"
    )


def _data_missing_message(exc: FileNotFoundError) -> str:
    """A missing dataset, with what applies here: linear_eval has no download option."""
    from mitools.data.datasets import DatasetNotFoundError

    if not isinstance(exc, DatasetNotFoundError):
        return str(exc)
    return (
        f"{exc.detail}; linear_eval does not download: download and unpack {exc.url} into ROOT "
        "first (e.g. with a trainer run given --set data.download=true), or point --root at the "
        "folder that holds it"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.linear_eval",
        description="Linear probe and kNN on a frozen backbone; results as JSON. Bad input is a "
        "one-line error (exit status 2) before any evaluation.",
    )
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    parser.add_argument("--data", default=None, help="dataset name (default: the run's)")
    parser.add_argument("--root", default=None, help="dataset root (default: the run's)")
    parser.add_argument(
        "--labels-per-class", type=int, default=None,
        help="train the probe / kNN on N labelled images per class (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="augmented",
        help="augmented (default): the standard linear protocol, fresh random crops every epoch, "
        "SGD (momentum 0.9, cosine lr) for --epochs, one backbone pass per epoch; cached (fast): "
        "unaugmented features computed once, --solver for --steps (a simplification)",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, default=100, help="augmented protocol: SGD epochs (default 100)"
    )
    parser.add_argument(
        "--lr", type=float, default=0.1,
        help="SGD learning rate, cosine-annealed (augmented, or cached with --solver sgd; "
        "default 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--solver", choices=("lbfgs", "sgd"), default="lbfgs",
        help="cached protocol: probe solver (default lbfgs)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=100,
        help="cached protocol: L-BFGS iterations / SGD epochs (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--weight-decay", type=float, default=None,
        help=f"L2 penalty weight_decay/2 ||W||^2 of the probe (default: the protocol's, "
        f"{default_weight_decay('augmented'):g} augmented, {default_weight_decay('cached'):g} "
        "cached); the value used is in the JSON",
    )  # fmt: skip
    parser.add_argument("--knn-k", type=int, default=200, help="kNN neighbours (default 200)")
    parser.add_argument(
        "--knn-temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)"
    )
    parser.add_argument("--ema", action="store_true", help="probe the momentum encoder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="label subset, augmentations, order")
    parser.add_argument(
        "--out", default=None,
        help="JSON file, written atomically; its folder is created and checked for writing "
        "before the evaluation (default: stdout only)",
    )  # fmt: skip
    return parser


def _given_options(argv: list[str] | None, args: argparse.Namespace) -> set[str]:
    """The destinations of the options given on the command line (not left at their default):
    argparse fills in a default only for names the namespace does not hold yet."""
    unset = object()
    namespace = argparse.Namespace(**{name: unset for name in vars(args)})
    _build_parser().parse_args(argv, namespace=namespace)
    return {name for name, value in vars(namespace).items() if value is not unset}


def _ignored_flags(args: argparse.Namespace, given: set[str]) -> str | None:
    """One line naming the given options that the chosen protocol does not use, or None."""
    if args.protocol == "cached":
        flags = ["--epochs"] if "epochs" in given else []
        if "lr" in given and args.solver != "sgd":
            flags.append("--lr")
        if not flags:
            return None
        why = "--epochs is for --protocol augmented" if "--epochs" in flags else ""
        if "--lr" in flags:
            why += ("; " if why else "") + "--lr for --protocol augmented or --solver sgd"
        return (
            f"{', '.join(flags)} ignored with --protocol cached --solver {args.solver}, which "
            f"trains for --steps {args.steps} ({why})"
        )
    flags = [f"--{name}" for name in ("solver", "steps") if name in given]
    if not flags:
        return None
    return (
        f"{', '.join(flags)} ignored with --protocol {args.protocol}, which trains SGD for "
        f"--epochs {args.epochs} (--solver and --steps are for --protocol cached)"
    )


def main(argv: list[str] | None = None) -> int:
    from mitools.checkpoint import atomic_write_text
    from mitools.data.datasets import get_spec

    args = _build_parser().parse_args(argv)

    def fail(msg: object) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    problem = _check_args(args)
    if problem:
        return fail(problem)
    ignored = _ignored_flags(args, _given_options(argv, args))
    if ignored:
        print(f"warning: {ignored}", file=sys.stderr)
    try:
        backbone, state = load_backbone(args.checkpoint, ema=args.ema)
    except (ValueError, FileNotFoundError, IsADirectoryError) as exc:  # CheckpointError: ValueError
        return fail(exc)
    data_cfg = (state.get("config") or {}).get("data", {})
    data = args.data or data_cfg.get("name")
    root = args.root or data_cfg.get("root")
    if data is None:
        return fail("the checkpoint stores no dataset name; pass --data")
    try:
        spec = get_spec(data)
    except ValueError as exc:
        return fail(exc)
    problem = _channel_mismatch(state, data, spec)
    if problem:
        return fail(problem)
    if root is None and data != "digits":
        return fail(
            f"dataset {data!r} needs its folder: pass --root DIR (the checkpoint stores none)"
        )
    if args.out:
        problem = _check_out_path(args.out)
        if problem:
            return fail(problem)
    try:
        result = evaluate_backbone(
            backbone, data, root, labels_per_class=args.labels_per_class, knn_k=args.knn_k,
            knn_temperature=args.knn_temperature, solver=args.solver, steps=args.steps,
            weight_decay=args.weight_decay, batch_size=args.batch_size, device=args.device,
            seed=args.seed, num_workers=args.num_workers, protocol=args.protocol,
            epochs=args.epochs, lr=args.lr,
        )  # fmt: skip
    except FileNotFoundError as exc:
        return fail(_data_missing_message(exc))
    except LabelsPerClassError as exc:
        return fail(
            f"--labels-per-class {args.labels_per_class}: {exc.detail} (the {data} "
            f"{spec.train_split!r} split)"
        )
    except ValueError as exc:
        return fail(exc)
    if result.knn_top1 is not None and result.knn_k < args.knn_k:
        print(
            f"warning: kNN used k = {result.knn_k}, not --knn-k {args.knn_k}: k is capped at the "
            f"number of probe training images ({result.n_train})",
            file=sys.stderr,
        )
    out = {
        "checkpoint": str(args.checkpoint), "data": data, "epoch": state.get("epoch"),
        "seed": args.seed, "ema": bool(args.ema),
    }  # fmt: skip
    out.update(asdict(result))
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out).expanduser(), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
