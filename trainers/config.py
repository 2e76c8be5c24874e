"""Training configuration: a dataclass tree loaded from YAML with ``--set a.b=value`` overrides.

A config file is a YAML mapping with the sections ``data``, ``model``, ``loss``, ``optim``,
``train`` and ``eval`` (see the dataclasses below for every key and its default). A file may start
with ``defaults: [other.yaml, ...]``: those files (paths relative to this one, ``.yaml`` optional)
are loaded first, in order, and this file's keys are merged over them (nested mappings merge key
by key; lists and scalars replace). So a per-dataset/per-method config is a few lines over
``base.yaml`` + ``datasets/<name>.yaml`` + ``methods/<name>.yaml``.

Overrides ``--set a.b=value`` are applied last; ``value`` is parsed as YAML (``1e-3``, ``true``,
``[64, 32]``, ``null``) and then checked against the field's type like a file value.

Numbers: files and ``--set`` values are read with PyYAML's safe loader plus the YAML 1.2 /
Python float forms that YAML 1.1 reads as strings (``1e-3``, ``5E-4``, ``1e30``, ``1.0e5``), so
those are floats in files, in ``--set`` values and in the free-form ``loss.params``. Integers stay
integers (``10``, ``0x1F``); ``1e``, ``e5``, ``1.2.3`` and dates are not floats. An int given for
a float field is converted.

Errors are one line (:class:`ConfigError`, a ValueError): an unknown key names the nearest known
key (difflib), a wrong type names the key, the expected type and the value.
``loss.params`` is free-form (it goes to ``mitools.losses.build_loss``) and is checked when the
loss is built (:func:`check_loss_params`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "all_keys",
    "dump_yaml",
    "check_loss_params",
]


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key and the problem."""


# YAML 1.1 (PyYAML) resolves a plain scalar as a float only with a dot and a signed exponent
# (``1.0e-3``); ``1e-3``, ``5E-4``, ``1e30`` and ``1.0e5`` stay strings. This adds the YAML 1.2
# core-schema floats with an exponent (the forms without one, ``.5``, ``5.``, ``1.5``, ``.inf``,
# ``.nan``, are floats in YAML 1.1 already). The exponent is required, so digit strings (``10``,
# ``0x1F``, ``09``) resolve as before: PyYAML's own float, int and timestamp resolvers are tried
# first, and this one is appended after them for the same first characters.
_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_FLOAT_FIRST_CHARS = list("-+0123456789.")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``-style floats (registered on this subclass
    only; PyYAML copies the resolver table on the first registration)."""


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes strings :class:`_Loader` would read as floats (``"1e5"``)."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT, _FLOAT_FIRST_CHARS)
del _cls


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass


@dataclass
class DataConfig:
    """Dataset and input pipeline.

    ``augment``: "batch" applies ``mitools.data.augment.BatchAugment`` to whole batches on the
    training device (per-sample random parameters; no worker processes), "workers" applies
    ``TwoViewTransform`` in DataLoader workers (CPU), "hybrid" splits them: workers decode, crop
    and flip each view (uint8), the device applies colour jitter, grayscale, blur, solarisation
    and normalisation to the batch (``BatchAugment.photometric``; for large images, where the
    workers' blur and colour work limit throughput). ``preset`` defaults to the dataset's preset.
    ``batch_size`` is the GLOBAL batch (split evenly over DDP ranks).
    ``on_device`` (``augment: batch`` only): keep the whole unaugmented pre-training split as one
    tensor on the training device and index batches there (no DataLoader, no host-to-device copy
    per step); None = automatic: on CUDA when it needs at most ``on_device_max_gib`` (CIFAR,
    STL-10, Tiny-ImageNet, digits; not ImageNet-100).
    ``augment_graph`` (CUDA, ``augment: batch`` or ``hybrid``): replay the augmentation as a captured CUDA graph
    (one launch instead of hundreds of small kernels; None = automatic: on CUDA).
    ``asymmetric``: BYOL's asymmetric views (view 1 always blurred, view 2 rarely blurred and
    sometimes solarised); None = automatic: on for ``loss.name: byol`` only.
    ``view``: overrides of :class:`mitools.data.augment.ViewConfig` fields applied to both views
    of the preset, e.g. ``{crop_scale: [0.8, 1.0], saturation: 0.4}`` (the MIO reference code's
    crop and jitter); checked when the run starts (unknown field: the nearest one is named).
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    augment: str = "batch"
    preset: str | None = None
    batch_size: int = 256
    num_workers: int = 0
    pin_memory: bool = True
    on_device: bool | None = None
    on_device_max_gib: float = 16.0
    augment_graph: bool | None = None
    asymmetric: bool | None = None
    view: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Encoder (the :class:`mitools.models.EncoderSpec` fields) and training-time wrappers.

    ``momentum_encoder``: keep an EMA target (BYOL, EMI, MEC); its momentum follows BYOL's cosine
    schedule from ``momentum_base`` to ``momentum_final``. ``sync_batchnorm``: convert BN layers to
    SyncBatchNorm under DDP (CUDA only in PyTorch).
    """

    arch: str = "small_cnn"
    cifar_stem: bool = True
    in_channels: int = 1
    projector_dims: list[int] = field(default_factory=lambda: [128, 64])
    projector_bn: bool = True
    projector_last_bn: bool = False
    predictor_dims: list[int] | None = None
    predictor_bn: bool = True
    predictor_last_bn: bool = False
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    input_dim: int | None = None
    momentum_encoder: bool = False
    momentum_base: float = 0.99
    momentum_final: float = 1.0
    momentum_buffers: str = "own"
    sync_batchnorm: bool = False

    def encoder_spec_dict(self) -> dict[str, Any]:
        from mitools.models import EncoderSpec

        names = {f.name for f in dataclasses.fields(EncoderSpec)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in names}


@dataclass
class LossConfig:
    """``name`` as in ``mitools.losses.LOSSES`` (or "constant", a zero-gradient control);
    ``params`` are keyword arguments of that loss (``compute_dtype: float32|float64`` allowed).

    ``target_pairing`` (momentum encoder, losses other than byol/mec, which take targets
    natively): "cross" evaluates ``loss(cat(p1, p2), cat(t2, t1))``, online view a against target
    view b; the EMI paper's exact pairing is unknown.
    ``mec_warmup_epochs``: MEC's 1/lambda warm-up (official: 10 epochs).
    """

    name: str = "emi"
    params: dict[str, Any] = field(default_factory=dict)
    gather_distributed: bool = True
    target_pairing: str = "cross"
    mec_warmup_epochs: int = 0


@dataclass
class OptimConfig:
    """Optimiser and per-step schedule: linear warm-up for ``warmup_epochs`` then cosine to
    ``final_lr_ratio * lr``. ``lr_scaling``: "none" uses ``lr`` as is, "linear" uses
    ``lr * batch_size / 256``, "sqrt" uses ``lr * sqrt(batch_size)``."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 1e-3
    clip_lr: bool = False
    lr_scaling: str = "none"
    warmup_epochs: float = 0.0
    final_lr_ratio: float = 0.0
    warmup_start_ratio: float = 0.0
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    """Loop settings. ``run_dir`` may use ``{data}``, ``{loss}``, ``{arch}``, ``{seed}``.
    ``amp``: "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16", "off". ``device``: "auto",
    "cpu", "cuda". ``deterministic``: torch.use_deterministic_algorithms (CPU tests).
    ``max_steps_per_epoch``: cap for smoke runs (0 = whole epoch).
    ``check_every_steps``: how often the loop reads the loss back from the device to check that it
    is finite and to update the progress bar (0 = automatic: every step on CPU, every 50 steps
    and at logging steps on CUDA, where each read stalls the launch queue). A non-finite loss is
    still reported with the step where it first occurred, and always before a checkpoint.
    ``compile``: ``torch.compile`` the two-view model. ``compile_loss``: also compile the loss
    module, fusing its many small operators (EMI's log-det series and power iterations: about
    260 launches per step eagerly, ``benchmarks.step_ops``); off by default, its GPU speed-up is
    unmeasured. Not with MEC's lambda warm-up (a Python float that changes every step would
    recompile the loss)."""

    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    compile_loss: bool = False
    channels_last: bool = True
    deterministic: bool = False
    run_dir: str = "runs/{data}_{loss}"
    log_every_steps: int = 50
    checkpoint_every_epochs: int = 0
    max_steps_per_epoch: int = 0
    check_every_steps: int = 0
    progress: bool = True
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """Online monitoring at the end of every ``every_epochs`` epochs (0 = never): weighted
    cosine kNN and a linear probe on frozen backbone features of the probe splits (no
    augmentation), at most ``max_samples`` images per split; spectrum of the projections."""

    every_epochs: int = 1
    knn: bool = True
    knn_k: int = 200
    knn_temperature: float = 0.07
    linear_probe: bool = True
    probe_steps: int = 100
    probe_weight_decay: float = 1e-4
    max_samples: int = 10000
    batch_size: int = 512


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- key handling

_FREE_FORM = {"loss.params", "data.view"}
_SECTIONS = ("data", "model", "loss", "optim", "train", "eval")


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the tree (sections' leaves), e.g. ``optim.lr``."""
    out = []
    for name, hint in _fields(cls).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            out += all_keys(hint, key + ".")
        else:
            out.append(key)
    return out


# Common names from other code bases that difflib cannot relate to ours.
_ALIASES = {
    "learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
    "num_epochs": "epochs", "max_epochs": "epochs", "workers": "num_workers",
    "optimizer": "name", "warmup": "warmup_epochs",
}  # fmt: skip


def _unknown_key(key: str) -> ConfigError:
    keys = all_keys() + [k.split(".")[0] for k in all_keys()]
    section, _, leaf = key.rpartition(".")
    alias = f"{section}.{_ALIASES.get(leaf, '')}"
    if leaf in _ALIASES and alias in keys:
        return ConfigError(f"unknown config key {key!r}; did you mean {alias!r}?")
    near = difflib.get_close_matches(key, sorted(set(keys)), n=1, cutoff=0.5)
    if not near:  # match on the last component only (e.g. "optim.learning_rate" -> "optim.lr")
        leaf = key.rsplit(".", 1)[-1]
        cands = {k.rsplit(".", 1)[-1]: k for k in all_keys()}
        hit = difflib.get_close_matches(leaf, list(cands), n=1, cutoff=0.5)
        near = [cands[hit[0]]] if hit else []
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; int -> float is the only conversion."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every field uses one of the types above
        return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def config_from_dict(raw: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested dict; unknown keys and wrong types raise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = _fields(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key)
        hint = fields[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = config_from_dict(value if value is not None else {}, hint, key + ".")
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (str, int, float, bool, None, list, dict): YAML- and checkpoint-safe."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'defaults' include")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: invalid YAML: {first}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    includes = raw.pop("defaults", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(
            f"{path}: 'defaults' must be a file name or a list of file names, got {includes!r}"
        )
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = path.parent / inc
        if not inc_path.suffix:
            inc_path = inc_path.with_suffix(".yaml")
        merged = _merge(merged, _read_yaml(inc_path, (*seen, path)))
    return _merge(merged, raw)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = _load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (before type checking).

    Keys must exist in the schema (``loss.params.X`` is free-form); string fields keep the raw
    text (so ``--set train.run_dir=123`` stays a string).
    """
    out = _merge({}, raw)
    schema = dict.fromkeys(all_keys())
    for item in overrides:
        parts, value = _parse_override(item)
        key = ".".join(parts)
        free = any(key.startswith(f + ".") for f in _FREE_FORM)
        if len(parts) == 1 and key in _SECTIONS:
            raise ConfigError(
                f"--set {key}=...: {key!r} is a section; set one of its keys, e.g. "
                f"--set {next(k for k in schema if k.startswith(key + '.'))}=VALUE"
            )
        if key not in schema and not free and key not in _FREE_FORM:
            raise _unknown_key(key)
        if not free and isinstance(value, (int, float, bool)) and _leaf_hint(parts) is str:
            value = item.split("=", 1)[1]
        node = out
        for depth, p in enumerate(parts[:-1]):
            if p in node and node[p] is not None and not isinstance(node[p], dict):
                # a file's `train: 5` must stay an error, not be replaced by {} (which would
                # silently drop every setting the included files made in that section)
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"{where}: expected a mapping, got {node[p]!r}")
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def _leaf_hint(parts: list[str]) -> Any:
    cls: Any = Config
    for p in parts:
        cls = _fields(cls)[p]
    return cls


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (with its ``defaults`` includes), apply ``overrides``, type-check.

    ``path=None`` gives the defaults (the embedded digits + EMI setting).
    """
    raw = _read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_dict(raw)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML that :func:`load_config` (and plain ``yaml.safe_load``) reads
    back to the same values: floats are written as ``1.0e-05``, ``1.0e+30``, ``.inf``; strings
    that look like numbers are quoted."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)


def check_loss_params(name: str, params: dict[str, Any]) -> None:
    """Raise ConfigError if ``loss.params`` has a key the loss does not accept (nearest named)."""
    import inspect

    from mitools.losses import LOSSES

    if name == "constant":
        if params:
            raise ConfigError(f"loss 'constant' takes no params, got {sorted(params)}")
        return
    if name not in LOSSES:
        near = difflib.get_close_matches(name, [*LOSSES, "constant"], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"loss.name: unknown loss {name!r}{hint}")
    accepted = set(inspect.signature(LOSSES[name].__init__).parameters) - {"self", "predictor"}
    for key in params:
        if key not in accepted:
            near = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = (
                f"; did you mean 'loss.params.{near[0]}'?"
                if near
                else f"; it accepts {', '.join(sorted(accepted - {'gather_distributed'}))}"
            )
            raise ConfigError(f"unknown config key 'loss.params.{key}' for loss {name!r}{hint}")
