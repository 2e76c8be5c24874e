"""Collapse diagnosis of a checkpoint or of saved embeddings: ``python -m mitools.diagnose CKPT``.

Inputs (detected from the content, loaded with ``weights_only=True`` / ``allow_pickle=False``, so
nothing in the file can run code):

- a trainer checkpoint (:mod:`mitools.checkpoint` schema: ``model`` + ``encoder_spec``): the
  encoder is rebuilt from the stored spec; layers ``backbone`` (h) and ``projector`` (z);
- a plain state dict (torchvision, DDP, other SSL code), also wrapped as ``{"state_dict": ...}``
  (PyTorch Lightning): needs ``--arch`` (and ``--cifar-stem`` for CIFAR-style ResNets); prefixes
  ``module.``, ``_orig_mod.``, ``backbone.``, ``encoder.``, ``model.`` are stripped, a classifier head ``fc.*`` is dropped; the input channels come from the dataset and
  ``small_cnn`` widths from the conv weights; layer ``backbone`` only (the keys left out, e.g. the
  ``projector.*`` of a full-model state dict, are named on stderr; a state dict whose first
  convolution takes another channel count than ``--data`` has is refused with a hint to pass
  ``--data``);
- embeddings: a ``.npy`` array or a ``.pt`` file holding a 2-D tensor or a dict with ``z`` (or
  ``embeddings``) and optionally ``z2`` (a second view, for the alignment). Model options
  (``--data``, ``--layer``, ``--samples``, ...) do not apply and are named in a warning.

Other formats (``.npz``, CSV, pickles) are refused with a one-line message naming the accepted
ones.

Models are evaluated (eval mode, the dataset's deterministic eval transform) on ``--samples``
images of ``--data``/``--split`` (default: the checkpoint's dataset and the dataset's eval split;
a random subset with ``--seed`` when the split is larger). ``--layer`` defaults to the projector
(the layer the objective shapes; backbone features after a ReLU are non-negative with a large
mean, which dominates the uncentred RankMe: on digits, 5-epoch EMI and MIO backbones measured
RankMe / d = 0.21-0.22, under the 0.25 threshold, while their projectors measured 0.39-0.41).
Each layer gets a
:func:`mitools.spectrum.collapse_report`; the table and verdicts are printed (a backbone verdict
with the note that it is indicative only), and ``--out DIR`` receives ``report.json`` and
``spectrum_<layer>.png`` (log singular values with the effective rank marked; cumulative explained
variance).

``--hessian`` (trainer checkpoints only) adds the top eigenvalues, the most negative one and the
trace of the Hessian of the checkpoint's own training loss with respect to the encoder parameters,
on 64 frozen augmented view pairs (:func:`checkpoint_hessian`); it takes minutes on a CPU, its
start (its size: parameters, view pairs, probes) and end are printed on stderr.

Exit codes: 0 report written; 1 only with ``--fail-on collapse`` when the judged layer is not
healthy: the projector whenever it was analysed (with ``--layer both`` the backbone verdict, which
is indicative only, does not count), else the one layer analysed (backbone of a plain state dict,
or the embeddings); 2 bad input (one-line ``error:`` message; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mitools.progress import progress
from mitools.spectrum import CollapseReport, CollapseThresholds, collapse_report

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_COLLAPSE",
    "EXIT_OK",
    "DiagnoseError",
    "LoadedInput",
    "diagnose",
    "embed",
    "format_table",
    "load_input",
    "main",
    "parse_data_arg",
    "plot_spectrum",
]

EXIT_OK, EXIT_COLLAPSE, EXIT_BAD_INPUT = 0, 1, 2
LAYERS = ("backbone", "projector")
EMBEDDING_KEYS = ("z", "embeddings")
DEFAULT_SAMPLES = 25_600  # images embedded per layer (the RankMe paper's count)
# Below this, a failure of the spectrum computation is re-raised as is; at or above it, it is
# reported as an overflow (a float32 Gram of 500 x 32 Gaussian rows overflows near |z| = 1e18).
HUGE_EMBEDDINGS = 1e15
ACCEPTED_FORMATS = (
    "accepted: a .pt trainer checkpoint or state dict, or embeddings as a 2-D .npy array "
    "(numpy.save) or a .pt file holding a 2-D tensor or a dict with 'z' (or 'embeddings')"
)
BACKBONE_CAVEAT = (
    "the backbone verdict is indicative only: the collapse thresholds are calibrated on "
    "projector outputs (healthy digits EMI / MIO backbones measured RankMe / d = 0.21-0.22, "
    "below the 0.25 cut)"
)
HESSIAN_MESSAGE = (
    "--hessian: needs a trainer checkpoint (it holds the training loss in its config); skipped, "
    "the spectrum report is unaffected"
)


def hessian_views(
    data_name: str, root: str | os.PathLike[str] | None, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen pair of augmented views ``--hessian`` evaluates the loss on: ``n`` images of the
    dataset's pre-training split, drawn and augmented (the dataset's preset) with ``seed``."""
    from mitools.data import build_dataset, get_spec
    from mitools.data.augment import BatchAugment, loader_transform, preset_for
    from mitools.hessian import freeze_views

    spec = get_spec(data_name)
    dataset = build_dataset(
        data_name, root, spec.train_split, transform=loader_transform(data_name)
    )
    augment = BatchAugment(preset_for(data_name))
    return freeze_views(dataset, min(n, len(dataset)), augment, seed=seed)


def checkpoint_hessian(
    loaded: LoadedInput,
    data_name: str,
    root: str | os.PathLike[str] | None,
    *,
    n: int = 64,
    k: int = 5,
    n_probes: int = 32,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Hessian summary (:func:`mitools.hessian.hessian_summary`) of the checkpoint's own training
    loss, rebuilt from its config, on :func:`hessian_views`, over all encoder parameters
    (backbone + projector), BatchNorm in eval mode. Stateful losses (EMA covariances) are put in
    eval mode so that every Hessian-vector product sees the same function. ``log`` receives a
    line before the computation (its size: parameters, view pairs, probes) and one
    after it (the time taken); :func:`hessian_summary` offers no per-product hook."""
    from mitools.hessian import hessian_summary
    from mitools.losses import LOSSES, build_loss

    loss_cfg = loaded.config.get("loss") if isinstance(loaded.config, dict) else None
    if not isinstance(loss_cfg, dict) or loss_cfg.get("name") not in LOSSES:
        name = loss_cfg.get("name") if isinstance(loss_cfg, dict) else None
        raise DiagnoseError(
            f"{loaded.path}: --hessian needs the training loss in the checkpoint's config "
            f"(found {name!r}; known: {', '.join(sorted(LOSSES))})"
        )
    loss = build_loss(loss_cfg["name"], **dict(loss_cfg.get("params") or {})).eval()
    model = loaded.model
    assert model is not None
    model = model.double()
    views = tuple(v.double() for v in hessian_views(data_name, root, n, seed))

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, z1 = net(batch[0])
        _, z2 = net(batch[1])
        return loss(z1, z2)

    if log is not None:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(
            f"Hessian: {n_params} parameters, {int(views[0].shape[0])} frozen view pairs; "
            f"Hessian-vector products: one per Lanczos step (top {k} eigenvalues) and per trace "
            f"probe ({n_probes}); this can take minutes on a CPU"
        )
    start = time.perf_counter()
    summary = hessian_summary(model, loss_fn, views, k=k, n_probes=n_probes, seed=seed)
    if log is not None:
        log(
            f"Hessian: done in {time.perf_counter() - start:.1f} s "
            f"({summary['lanczos_iterations']} Lanczos steps)"
        )
    return {"loss_name": loss_cfg["name"], "n_views": int(views[0].shape[0]), **summary}


class DiagnoseError(ValueError):
    """Bad input for the diagnosis; the message is one line naming the file and the problem."""


@dataclass
class LoadedInput:
    """What a file turned out to be. ``kind``: "checkpoint", "state_dict" or "embeddings"."""

    kind: str
    path: Path
    model: nn.Module | None = None
    layers: tuple[str, ...] = ()
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    second_view: np.ndarray | None = None
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_data_arg(value: str) -> tuple[str, str | None]:
    """``"digits"`` -> (digits, None); ``"cifar10:/data/cifar"`` -> (cifar10, "/data/cifar")."""
    from mitools.data import get_spec

    name, _, root = value.partition(":")
    get_spec(name)  # unknown names raise ValueError naming the known ones
    return name, (root or None)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_embeddings(path: Path, name: str, arr: Any) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().to(torch.float64).numpy() if arr.is_floating_point() else arr
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DiagnoseError(f"{path}: {name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DiagnoseError(f"{path}: {name} must be 2-D (n_samples, dim), got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise DiagnoseError(
            f"{path}: {name} needs at least 2 rows (samples) and at least 1 column (dimensions), "
            f"got shape {arr.shape}"
        )
    bad = int(np.size(arr) - np.isfinite(arr).sum())
    if bad:
        raise DiagnoseError(f"{path}: {name} contains {bad} non-finite values (NaN or inf)")
    return arr


def _load_torch_file(path: Path) -> Any:
    from mitools.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path, required=())
    except CheckpointError as exc:
        if "top-level object is a" not in str(exc):
            raise DiagnoseError(_first_line(exc)) from exc
    # A tensor (or list) at top level: the header checks passed and weights_only refused
    # nothing, so loading it again the same safe way is sound.
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_finite_weights(path: Path, state_dict: dict[str, Any]) -> None:
    bad = [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]
    if bad:
        raise DiagnoseError(
            f"{path}: {len(bad)} tensors hold non-finite weights (NaN or inf), first: {bad[:3]}"
        )


def _small_cnn_widths(state_dict: dict[str, Any]) -> list[int]:
    convs = [v for v in state_dict.values() if isinstance(v, torch.Tensor) and v.ndim == 4]
    return [int(w.shape[0]) for w in convs]


def _key_sample(mapping: Mapping, n: int = 3) -> str:
    keys = [str(k) for k in list(mapping)[:n]]
    return ", ".join(keys) + (", ..." if len(mapping) > n else "")


def _key_groups(keys: list[str]) -> str:
    """``projector.* (8), head.* (2)``: keys grouped by their first component."""
    groups: dict[str, int] = {}
    for k in keys:
        label = f"{k.split('.', 1)[0]}.*" if "." in k else k
        groups[label] = groups.get(label, 0) + 1
    return ", ".join(f"{label} ({n})" for label, n in groups.items())


def _check_input_channels(
    path: Path, state: Mapping[str, Any], arch: str, in_channels: int | None
) -> None:
    """The first convolution's input channels against the dataset's (``--data``; 3 without it),
    as a one-line error suggesting ``--data`` instead of an "another architecture" mismatch."""
    from mitools.data import get_spec, known_datasets

    first = next(
        ((k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.ndim == 4), None
    )
    expected = in_channels or 3
    if first is None or int(first[1].shape[1]) == expected:
        return
    key, weight = first
    stored = int(weight.shape[1])
    origin = "from --data" if in_channels else "the default, no --data given"
    fitting = [n for n in known_datasets() if get_spec(n).channels == stored]
    hint = f" ({', '.join(fitting)})" if fitting else ""
    raise DiagnoseError(
        f"{path}: input-channel mismatch: the state dict's first convolution {key} takes "
        f"{stored}-channel images, the {arch} backbone was built for {expected} ({origin}); "
        f"pass --data with a {stored}-channel dataset{hint}"
    )


def _load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file as embeddings; anything else is one line naming the file and the format."""
    expected = "expected a 2-D numeric array written by numpy.save"
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise DiagnoseError(f"{path}: not a .npy file (no NumPy header); {expected}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated, object arrays (pickle): one line
        why = "holds pickled objects, refused" if "pickle" in str(exc) else _first_line(exc)
        raise DiagnoseError(f"{path}: unreadable .npy array ({why}); {expected}") from exc
    return _check_embeddings(path, "z", arr)


def load_input(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    cifar_stem: bool = False,
    in_channels: int | None = None,
) -> LoadedInput:
    """Detect and load a checkpoint, plain state dict or embeddings file (see module docstring).

    ``in_channels`` is needed for plain state dicts (the dataset's channels). Raises
    :class:`DiagnoseError` (a ValueError) with a one-line message on bad input.
    """
    from mitools.models import (
        EncoderSpec,
        StateDictMismatchError,
        build_encoder_from_checkpoint_dict,
        strip_prefixes,
    )

    path = Path(path)
    if not path.is_file():
        raise DiagnoseError(f"{path}: no such file")
    if path.suffix == ".npy":
        return LoadedInput("embeddings", path, embeddings={"z": _load_npy(path)})
    if path.suffix in (".npz", ".csv", ".txt", ".pkl", ".pickle"):
        raise DiagnoseError(f"{path}: {path.suffix} files are not read; {ACCEPTED_FORMATS}")
    obj = _load_torch_file(path)
    if isinstance(obj, torch.Tensor):
        return LoadedInput("embeddings", path, embeddings={"z": _check_embeddings(path, "z", obj)})
    if not isinstance(obj, dict):
        raise DiagnoseError(
            f"{path}: holds a {type(obj).__name__}, not a tensor or a dict; {ACCEPTED_FORMATS}"
        )
    key = next((k for k in EMBEDDING_KEYS if k in obj), None)
    if key is not None:
        z = _check_embeddings(path, key, obj[key])
        z2 = _check_embeddings(path, "z2", obj["z2"]) if obj.get("z2") is not None else None
        if z2 is not None and z2.shape != z.shape:
            raise DiagnoseError(f"{path}: z2 has shape {z2.shape}, z has {z.shape}")
        return LoadedInput("embeddings", path, embeddings={"z": z}, second_view=z2)
    notes: list[str] = []
    wrapped = obj.get("state_dict")
    if "encoder_spec" not in obj and isinstance(wrapped, Mapping) and _all_tensors(wrapped):
        # PyTorch Lightning and many training scripts save {"state_dict": ..., "epoch": ...}
        obj = dict(wrapped)
        notes.append("read the file's 'state_dict' entry")
    try:
        if "model" in obj and "encoder_spec" in obj:
            state = obj["model"]
            if not isinstance(state, dict):
                raise DiagnoseError(
                    f"{path}: 'model' is a {type(state).__name__}, not a state dict"
                )
            stored_spec = obj["encoder_spec"]
            if not isinstance(stored_spec, (Mapping, EncoderSpec)):
                raise DiagnoseError(
                    f"{path}: encoder_spec is a {type(stored_spec).__name__}; it must be a "
                    "mapping (dict) as written by the trainer (EncoderSpec.to_dict())"
                )
            try:
                spec = (
                    stored_spec
                    if isinstance(stored_spec, EncoderSpec)
                    else EncoderSpec.from_dict(stored_spec)
                )
            except (ValueError, TypeError, KeyError) as exc:
                raise DiagnoseError(f"{path}: encoder_spec: {_first_line(exc)}") from exc
            _check_finite_weights(path, state)
            model = build_encoder_from_checkpoint_dict(spec, state)
            config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
            return LoadedInput("checkpoint", path, model=model, layers=LAYERS, config=config)
        if "model" in obj and isinstance(obj["model"], dict):
            raise DiagnoseError(
                f"{path}: a checkpoint without 'encoder_spec'; pass its state dict alone with "
                "--arch, or re-save it with mitools.checkpoint"
            )
        if not _all_tensors(obj):
            raise DiagnoseError(
                f"{path}: neither a checkpoint, a state dict nor embeddings (keys: "
                f"{sorted(map(str, obj))[:6]}; embeddings go under the key 'z' or 'embeddings')"
            )
        if arch is None:
            raise DiagnoseError(
                f"{path}: a plain state dict ({len(obj)} tensors: {_key_sample(obj)}); pass "
                "--arch (resnet18|resnet50|small_cnn) and --cifar-stem if it applies (embeddings "
                "must be stored under the key 'z' or 'embeddings')"
            )
        _check_finite_weights(path, obj)
        state = strip_prefixes(obj)
        if any(k.startswith("backbone.") for k in state):
            dropped = [k for k in state if not k.startswith("backbone.")]
            state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
            note = "kept the backbone.* entries of the state dict"
            if dropped:
                note += (
                    f"; left out {len(dropped)} others ({_key_groups(dropped)}): the projector "
                    "of a plain state dict is not loaded, only the backbone is diagnosed"
                )
            notes.append(note)
        head = [k for k in state if k.startswith("fc.")]
        if head:
            state = {k: v for k, v in state.items() if k not in head}
            notes.append(f"dropped the classifier head ({', '.join(head)})")
        spec_kw: dict[str, Any] = dict(
            arch=arch, cifar_stem=cifar_stem, in_channels=in_channels or 3, projector_dims=[]
        )
        if arch == "small_cnn":
            widths = _small_cnn_widths(state)
            if widths:
                spec_kw["widths"] = widths
        _check_input_channels(path, state, arch, in_channels)
        spec = EncoderSpec(**spec_kw)
        model = build_encoder_from_checkpoint_dict(spec, state, backbone_only=True)
    except StateDictMismatchError as exc:
        raise DiagnoseError(f"{path}: {_first_line(exc)}") from exc
    return LoadedInput("state_dict", path, model=model, layers=("backbone",), notes=notes)


@torch.no_grad()
def embed(
    model: nn.Module,
    dataset: Any,
    layers: tuple[str, ...],
    *,
    samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Embeddings (float32 numpy) of ``layers`` for ``samples`` images of ``dataset``.

    A random subset (``seed``) when the dataset is larger than ``samples``; every image
    otherwise. ``projector`` needs an :class:`~mitools.models.SSLModel`.
    """
    n_total = len(dataset)
    if n_total == 0:
        raise DiagnoseError("the dataset is empty")
    idx = np.arange(n_total)
    if samples is not None and samples < n_total:
        idx = np.sort(np.random.default_rng(seed).choice(n_total, size=samples, replace=False))
    subset = torch.utils.data.Subset(dataset, idx.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    model = model.to(device).eval()
    backbone = getattr(model, "backbone", model)
    projector = getattr(model, "projector", None)
    if "projector" in layers and projector is None:
        raise DiagnoseError("layer 'projector' requested but the model has no projector")
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for batch in progress(loader, "embedding", total=len(loader)):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        h = backbone(x.to(device))
        if "backbone" in out:
            out["backbone"].append(h.float().cpu().numpy())
        if "projector" in out:
            out["projector"].append(projector(h).float().cpu().numpy())
    return {layer: np.concatenate(chunks) for layer, chunks in out.items()}


def diagnose(
    embeddings: dict[str, np.ndarray],
    *,
    second_view: np.ndarray | None = None,
    thresholds: CollapseThresholds | None = None,
    seed: int = 0,
) -> dict[str, CollapseReport]:
    """One :class:`CollapseReport` per layer.

    Non-finite embeddings raise :class:`DiagnoseError` (a ValueError), and so do embeddings
    whose magnitude overflows the spectrum computation (max |z| >= :data:`HUGE_EMBEDDINGS`;
    the float32 Gram of 500 x 32 Gaussian rows overflows near 1e18).
    """
    reports = {}
    for layer, z in embeddings.items():
        bad = int(np.size(z) - np.isfinite(z).sum())
        if bad:
            raise DiagnoseError(f"{layer} embeddings contain {bad} non-finite values (NaN or inf)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # surfaced via report.warnings
                reports[layer] = collapse_report(
                    z, second_view if layer == "z" else None, thresholds=thresholds, seed=seed
                )
        except ValueError as exc:  # numpy's LinAlgError is a ValueError
            z_max = float(np.abs(z).max())
            if z_max < HUGE_EMBEDDINGS:
                raise
            raise DiagnoseError(
                f"{layer} embeddings too large to analyse (max |z| = {z_max:.3g}; the spectrum "
                "computation overflows): the model has probably diverged"
            ) from exc
    return reports


def format_table(reports: dict[str, CollapseReport]) -> str:
    """Readable table: one column per layer, one row per statistic, then the verdicts."""
    rows: list[tuple[str, list[str]]] = []

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    stats = [
        ("samples x dim", lambda r: f"{r.n_samples} x {r.dim}"),
        ("effective rank (RankMe)", lambda r: fmt(r.effective_rank)),
        ("  / min(n, d)", lambda r: fmt(r.effective_rank_fraction)),
        ("effective rank (sigma^2)", lambda r: fmt(r.effective_rank_squared)),
        ("participation ratio", lambda r: fmt(r.participation_ratio)),
        ("numerical rank", lambda r: fmt(r.numerical_rank)),
        ("alpha-ReQ", lambda r: fmt(r.alpha_req.alpha if r.alpha_req else None)),
        ("  fit R^2", lambda r: fmt(r.alpha_req.r_squared if r.alpha_req else None)),
        ("normalized std", lambda r: fmt(r.normalized_std)),
        ("  healthy 1/sqrt(d)", lambda r: fmt(r.normalized_std_healthy)),
        ("uniformity (t=2)", lambda r: fmt(r.uniformity)),
        # positive pairs are needed: only embeddings saved with a second view (z2) have them
        (
            "alignment (alpha=2)",
            lambda r: "- (needs z2)" if r.alignment is None else fmt(r.alignment),
        ),
        ("verdict", lambda r: r.verdict),
    ]
    for name, get in stats:
        rows.append((name, [get(r) for r in reports.values()]))
    header = ["", *reports]
    widths = [max(len(header[0]), *(len(n) for n, _ in rows))]
    for j, layer in enumerate(reports):
        widths.append(max(len(layer), *(len(v[j]) for _, v in rows)))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for name, values in rows:
        cells = [name, *values]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    for layer, r in reports.items():
        lines.append(f"{layer}: {r.verdict.upper()} - " + "; ".join(r.reasons))
        if layer == "backbone":
            lines.append(f"{layer}: note: {BACKBONE_CAVEAT}")
        lines.extend(f"{layer}: warning: {w}" for w in r.warnings)
    return "\n".join(lines)


def plot_spectrum(report: CollapseReport, title: str, path: Path) -> Path:
    """Two panels: log singular values (RankMe marked) and cumulative explained variance."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = report.singular_values
    eig = report.covariance_eigenvalues
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    k = np.arange(1, s.size + 1)
    pos = s > 0
    ax1.semilogy(k[pos], s[pos], lw=1.5)
    ax1.axvline(report.effective_rank, color="C3", ls="--", lw=1)
    ax1.text(
        report.effective_rank,
        0.95,
        f" RankMe {report.effective_rank:.1f}",
        color="C3",
        transform=ax1.get_xaxis_transform(),
        va="top",
    )
    ax1.set_xlabel("index k")
    ax1.set_ylabel("singular value of Z (uncentred)")
    ax1.set_title(f"{title}: {report.verdict}")
    total = float(eig.sum())
    cum = np.cumsum(eig) / total if total > 0 else np.zeros_like(eig)
    ax2.plot(np.arange(1, eig.size + 1), cum, lw=1.5)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("number of components")
    ax2.set_ylabel("cumulative explained variance")
    ax2.set_title(f"participation ratio {report.participation_ratio:.1f} of d = {report.dim}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mitools.diagnose",
        description="Collapse diagnosis (effective rank, spectrum, normalised std) of a "
        "checkpoint, a plain state dict or saved embeddings.",
    )
    p.add_argument("path", help="checkpoint (.pt), state dict, or embeddings (.npy / .pt)")
    p.add_argument("--data", help="digits | NAME:ROOT (default: the checkpoint's dataset)")
    p.add_argument("--split", help="dataset split (default: the dataset's eval split)")
    p.add_argument(
        "--samples",
        type=int,
        help=f"images to embed (default {DEFAULT_SAMPLES:,}, as RankMe); models only",
    )
    p.add_argument(
        "--layer",
        choices=["backbone", "projector", "both"],
        help="default: projector when the model has one (the layer the objective shapes), "
        "else backbone. The collapse thresholds were calibrated on projector outputs: healthy "
        "digits EMI / MIO backbones measured RankMe / d = 0.21-0.22, below the 0.25 cut, so "
        "backbone verdicts are indicative only (said under the table)",
    )
    p.add_argument("--hessian", action="store_true", help="also summarise the loss Hessian")
    p.add_argument("--out", type=Path, help="folder for report.json and spectrum plots")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument(
        "--fail-on",
        choices=["collapse"],
        help="exit 1 when the judged layer is not healthy: the projector when it was analysed "
        "(with --layer both the backbone verdict, indicative only, does not count), else the "
        "only layer analysed",
    )
    p.add_argument("--arch", choices=["resnet18", "resnet50", "small_cnn"])
    p.add_argument("--cifar-stem", action="store_true", help="ResNet with the 3x3 CIFAR stem")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run(args: argparse.Namespace) -> int:
    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    if samples < 2:
        raise DiagnoseError(f"--samples must be >= 2, got {samples}")
    if args.out is not None:
        _check_out_dir(args.out)
    data_name, data_root = parse_data_arg(args.data) if args.data else (None, None)
    in_channels = None
    if data_name is not None:
        from mitools.data import get_spec

        in_channels = get_spec(data_name).channels
    loaded = load_input(
        args.path, arch=args.arch, cifar_stem=args.cifar_stem, in_channels=in_channels
    )
    if args.hessian and loaded.kind != "checkpoint":
        print(HESSIAN_MESSAGE, file=sys.stderr)
    for option in _ignored_options(args, loaded.kind):
        print(f"warning: {option}", file=sys.stderr)
    meta: dict[str, Any] = {"input": str(loaded.path), "kind": loaded.kind, "notes": loaded.notes}
    if loaded.kind == "embeddings":
        embeddings = loaded.embeddings
    else:
        from mitools.data import build_dataset, eval_transform, get_spec

        if data_name is None:
            data_cfg = loaded.config.get("data") if isinstance(loaded.config, dict) else None
            if not isinstance(data_cfg, dict) or not data_cfg.get("name"):
                raise DiagnoseError(f"{loaded.path}: no dataset stored; pass --data NAME[:ROOT]")
            data_name, data_root = str(data_cfg["name"]), data_cfg.get("root")
        spec = get_spec(data_name)
        split = args.split or spec.eval_split
        root = Path(data_root).expanduser() if data_root else None
        if root is None and data_name != "digits":
            raise DiagnoseError(
                f"{data_name}: no data folder given; pass --data {data_name}:ROOT "
                "(only digits needs none)"
            )
        if root is not None and not root.exists():
            raise DiagnoseError(f"{data_name}: data folder {root} does not exist")
        try:
            dataset = build_dataset(data_name, root, split, transform=eval_transform(data_name))
        except FileNotFoundError as exc:
            raise DiagnoseError(f"{data_name}: {_first_line(exc)}") from exc
        if args.layer is None:
            layers = ("projector",) if "projector" in loaded.layers else ("backbone",)
        else:
            layers = loaded.layers if args.layer == "both" else (args.layer,)
        if any(layer not in loaded.layers for layer in layers):
            raise DiagnoseError(
                f"{loaded.path}: layer {args.layer!r} is not available for a {loaded.kind} "
                f"(available: {', '.join(loaded.layers)})"
            )
        for note in loaded.notes:  # after the checks: an error stays the only line
            print(f"note: {note}", file=sys.stderr)
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        assert loaded.model is not None
        embeddings = embed(
            loaded.model,
            dataset,
            layers,
            samples=samples,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
        )
        meta.update(data=data_name, root=str(root) if root else None, split=split)
        if args.hessian and loaded.kind == "checkpoint":
            meta["hessian"] = checkpoint_hessian(
                loaded, data_name, root, seed=args.seed, log=lambda m: print(m, file=sys.stderr)
            )
    try:
        reports = diagnose(embeddings, second_view=loaded.second_view, seed=args.seed)
    except DiagnoseError as exc:
        raise DiagnoseError(f"{loaded.path}: {exc}") from exc
    for layer, r in reports.items():
        for w in r.warnings:
            print(f"warning: {layer}: {w}", file=sys.stderr)
    result = {
        **meta,
        "hessian": meta.pop("hessian", HESSIAN_MESSAGE if args.hessian else None),
        "layers": {layer: _layer_dict(layer, r, spectra=False) for layer, r in reports.items()},
    }
    if args.out is not None:
        from mitools.checkpoint import atomic_write_text

        full = {**result, "layers": {k: _layer_dict(k, r) for k, r in reports.items()}}
        atomic_write_text(
            args.out / "report.json", json.dumps(full, indent=2, default=_json_default)
        )
        for layer, r in reports.items():
            plot_spectrum(r, f"{loaded.path.name} [{layer}]", args.out / f"spectrum_{layer}.png")
    if args.format == "json":
        print(json.dumps(result, indent=2, default=_json_default))
    else:
        print(f"{loaded.path} ({loaded.kind})")
        print(format_table(reports))
        if isinstance(result["hessian"], dict):
            h = result["hessian"]
            top = ", ".join(f"{v:.4g}" for v in h["top_eigenvalues"])
            print(
                f"Hessian of the {h['loss_name']} loss ({h['n_params']} parameters, "
                f"{h['n_views']} frozen view pairs): top eigenvalues {top}; "
                f"min eigenvalue {h['min_eigenvalue']:.4g}; "
                f"trace {h['trace']:.4g} +- {h['trace_std_error']:.2g}"
            )
        if args.out is not None:
            print(f"wrote {args.out / 'report.json'} and spectrum plots")
    if args.fail_on == "collapse" and _judged(reports).collapsed:
        return EXIT_COLLAPSE
    return EXIT_OK


def _judged(reports: dict[str, CollapseReport]) -> CollapseReport:
    """The report ``--fail-on`` judges: the projector's when there is one (backbone verdicts are
    indicative only), else the only layer's."""
    return reports.get("projector") or next(iter(reports.values()))


def _layer_dict(layer: str, report: CollapseReport, spectra: bool = True) -> dict[str, Any]:
    out = report.to_dict(spectra=spectra)
    if layer == "backbone":
        out["note"] = BACKBONE_CAVEAT
    return out


def _ignored_options(args: argparse.Namespace, kind: str) -> list[str]:
    """The given options that do not apply to this kind of input (said, not silently dropped)."""
    given = [
        flag
        for flag, value in (
            ("--arch", args.arch), ("--cifar-stem", args.cifar_stem), ("--data", args.data),
            ("--split", args.split), ("--layer", args.layer),
            ("--samples", args.samples is not None),
        )
        if value
    ]  # fmt: skip
    if kind == "checkpoint":
        moot = [f for f in given if f in ("--arch", "--cifar-stem")]
        why = "the checkpoint stores its encoder"
    elif kind == "embeddings":
        moot = given
        why = "the input is embeddings, no model is run"
    else:
        return []
    return [f"{', '.join(moot)} ignored: {why}"] if moot else []


def _all_tensors(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def _check_out_dir(out: Path) -> None:
    """``--out`` must be a writable folder or creatable as one; created and checked before any
    work (:func:`mitools.checkpoint.folder_write_problem`)."""
    from mitools.checkpoint import folder_write_problem

    problem = folder_write_problem(out)
    if problem:
        raise DiagnoseError(f"--out {out}: {problem}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 collapse with --fail-on, 2 bad input)."""
    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError, EOFError, RuntimeError, KeyError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
