"""Encoders for self-supervised pre-training: backbones, projector/predictor MLPs, EMA targets.

An encoder is described by a plain :class:`EncoderSpec` (stored in every checkpoint as a dict of
plain Python types, so it survives ``torch.load(weights_only=True)``) and built by
:class:`SSLModel`::

    x --backbone--> h (features, used by linear probes) --projector--> z (used by the SSL loss)
                                                         [--predictor--> p (BYOL / SimSiam)]

Backbones
    ``resnet18`` / ``resnet50``: torchvision's ResNets (``weights=None``) with ``fc`` replaced by
    ``Identity``; feature dim 512 / 2048. ``cifar_stem=True`` replaces the 7x7 stride-2 stem and its
    max-pool by a 3x3 stride-1 convolution and no max-pool (the usual CIFAR/STL variant, also the
    MIO reference code's). ``small_cnn``: a few 3x3 conv-BN-ReLU layers and global average pooling,
    for scikit-learn's 8x8 ``digits`` on CPU. ``mlp``: flatten then Linear-BN-ReLU layers.

Projector / predictor
    :class:`MLP` with ``dims = [in, hidden..., out]``: Linear-BN-ReLU for every hidden layer, then
    a Linear, optionally followed by BN (``last_bn``). The MIO reference projector is
    ``MLP([feat, hidden, 128], last_bn=True)`` (Linear-BN-ReLU-Linear-BN); BYOL's predictor is
    ``MLP([256, 4096, 256], last_bn=False)``.

Momentum (EMA) target
    :class:`MomentumEncoder` keeps a copy of backbone + projector updated as
    ``theta_t <- m theta_t + (1 - m) theta_online`` with the BYOL schedule
    :func:`cosine_momentum`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "EncoderSpec",
    "MLP",
    "SSLModel",
    "MomentumEncoder",
    "StateDictMismatchError",
    "build_backbone",
    "build_encoder_from_checkpoint_dict",
    "cosine_momentum",
    "count_parameters",
    "small_cnn",
    "strip_prefixes",
]

ARCHS = ("resnet18", "resnet50", "small_cnn", "mlp")

# Prefixes added by wrappers: DDP/DataParallel ("module."), torch.compile ("_orig_mod."), and the
# attribute names other SSL code bases give the backbone ("backbone.", "encoder.", and "model."
# of a LightningModule holding the network as self.model).
DEFAULT_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.")


@dataclass
class EncoderSpec:
    """Plain description of an encoder (backbone + projector [+ predictor]).

    Attributes:
        arch: one of :data:`ARCHS`.
        cifar_stem: ResNets only: 3x3 stride-1 first conv and no max-pool (for 32x32 / 96x96 input).
        in_channels: image channels (3 for RGB, 1 for ``digits``).
        projector_dims: output widths of the projector layers after the backbone feature dim, e.g.
            ``[2048, 128]`` gives Linear(feat, 2048)-BN-ReLU-Linear(2048, 128)[-BN]. ``[]`` means
            no projector (identity).
        projector_bn: BN after each hidden projector Linear.
        projector_last_bn: BN after the last projector Linear (True in the MIO reference and
            SimCLR v2; False in BYOL).
        predictor_dims: output widths of the predictor layers (input is the projector output), or
            None for no predictor. BYOL: ``[4096, 256]``.
        predictor_bn: BN after each hidden predictor Linear.
        predictor_last_bn: BN after the last predictor Linear (False in BYOL / SimSiam).
        widths: ``small_cnn``: conv channels; ``mlp``: hidden widths of the backbone MLP.
        input_dim: ``mlp`` only: size of the flattened input (64 for 8x8 ``digits``).
    """

    arch: str = "resnet18"
    cifar_stem: bool = True
    in_channels: int = 3
    projector_dims: list[int] = field(default_factory=lambda: [2048, 128])
    projector_bn: bool = True
    projector_last_bn: bool = True
    predictor_dims: list[int] | None = None
    predictor_bn: bool = True
    predictor_last_bn: bool = False
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    input_dim: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHS}")
        if int(self.in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        for name in ("projector_dims", "widths"):
            dims = getattr(self, name)
            if any(int(d) < 1 for d in dims):
                raise ValueError(f"{name} must be positive widths, got {dims}")
        if self.predictor_dims is not None and len(self.predictor_dims) == 0:
            raise ValueError("predictor_dims must be None (no predictor) or a non-empty list")
        if (
            self.predictor_dims
            and self.projector_dims
            and (int(self.predictor_dims[-1]) != int(self.projector_dims[-1]))
        ):
            # the predictor's output is compared with (target) projections of the other view
            raise ValueError(
                f"predictor_dims must end in the projection dim {self.projector_dims[-1]} "
                f"(projector_dims[-1]), got {self.predictor_dims}"
            )
        if self.arch in ("small_cnn", "mlp") and len(self.widths) == 0:
            raise ValueError(f"arch {self.arch!r} needs at least one width in `widths`")
        if self.arch == "mlp" and (self.input_dim is None or int(self.input_dim) < 1):
            raise ValueError("arch 'mlp' needs input_dim (size of the flattened input)")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str, int, bool, list, None only): safe for ``weights_only`` loading."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EncoderSpec keys {unknown}; known keys: {sorted(known)}")
        kwargs = dict(d)
        for key in ("projector_dims", "widths", "predictor_dims"):
            if kwargs.get(key) is not None:
                kwargs[key] = [int(v) for v in kwargs[key]]
        return cls(**kwargs)


class MLP(nn.Sequential):
    """Linear-BN-ReLU blocks then a final Linear (optionally + BN).

    ``dims = [in, h1, ..., out]``; ``len(dims) - 1`` Linear layers. ``bn`` applies to the hidden
    layers, ``last_bn`` to the output (``affine`` BN, as in the MIO reference projector). With
    ``len(dims) == 1`` the module is the identity.
    """

    def __init__(self, dims: list[int], bn: bool = True, last_bn: bool = False) -> None:
        if len(dims) < 1 or any(int(d) < 1 for d in dims):
            raise ValueError(f"dims must be a non-empty list of positive widths, got {dims}")
        layers: list[nn.Module] = []
        n_linear = len(dims) - 1
        for i in range(n_linear):
            layers.append(nn.Linear(int(dims[i]), int(dims[i + 1])))
            last = i == n_linear - 1
            if not last:
                if bn:
                    layers.append(nn.BatchNorm1d(int(dims[i + 1])))
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(nn.BatchNorm1d(int(dims[i + 1])))
        super().__init__(*layers)
        self.dims = [int(d) for d in dims]
        self.out_dim = int(dims[-1])


def small_cnn(
    in_channels: int = 1, widths: list[int] | tuple[int, ...] = (32, 64, 128)
) -> nn.Module:
    """Conv3x3-BN-ReLU stack with a 2x2 max-pool after the second layer, then global average pool.

    Sized for 8x8 inputs (``digits``): 8x8 -> 8x8 -> 4x4 -> ... ; feature dim ``widths[-1]``.
    """
    layers: list[nn.Module] = []
    c_in = int(in_channels)
    for i, c_out in enumerate(widths):
        layers += [
            nn.Conv2d(c_in, int(c_out), 3, padding=1, bias=False),
            nn.BatchNorm2d(int(c_out)),
            nn.ReLU(inplace=True),
        ]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c_in = int(c_out)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _resnet(spec: EncoderSpec) -> tuple[nn.Module, int]:
    import torchvision

    factory = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
    net = factory[spec.arch](weights=None)
    if spec.cifar_stem:
        net.conv1 = nn.Conv2d(spec.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif spec.in_channels != 3:
        net.conv1 = nn.Conv2d(spec.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if spec.cifar_stem or spec.in_channels != 3:
        # Same init torchvision applies to its own convolutions.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def build_backbone(spec: EncoderSpec) -> tuple[nn.Module, int]:
    """Backbone ``x -> h`` (shape ``(batch, feature_dim)``) and its feature dim."""
    if spec.arch in ("resnet18", "resnet50"):
        return _resnet(spec)
    if spec.arch == "small_cnn":
        return small_cnn(spec.in_channels, spec.widths), int(spec.widths[-1])
    if spec.arch == "mlp":
        assert spec.input_dim is not None  # checked in EncoderSpec.__post_init__
        body = MLP([int(spec.input_dim), *spec.widths], bn=True, last_bn=True)
        # Features after a final BN-ReLU, like the hidden layers.
        return nn.Sequential(nn.Flatten(), body, nn.ReLU(inplace=True)), int(spec.widths[-1])
    raise ValueError(f"unknown arch {spec.arch!r}; expected one of {ARCHS}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class SSLModel(nn.Module):
    """Backbone + projector (+ optional predictor) built from an :class:`EncoderSpec`.

    ``forward(x) -> (h, z)``: backbone features and projections. The predictor is not applied in
    ``forward`` (the target branch of BYOL needs z without it); call :meth:`predict` on z.
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone, self.feature_dim = build_backbone(spec)
        proj_dims = [self.feature_dim, *spec.projector_dims]
        self.projector = MLP(proj_dims, bn=spec.projector_bn, last_bn=spec.projector_last_bn)
        self.projection_dim = proj_dims[-1]
        self.predictor: nn.Module | None = None
        if spec.predictor_dims is not None:
            pred_dims = [self.projection_dim, *spec.predictor_dims]
            self.predictor = MLP(pred_dims, bn=spec.predictor_bn, last_bn=spec.predictor_last_bn)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)

    def predict(self, z: Tensor) -> Tensor:
        """Predictor output p = q(z); raises if the spec has no predictor."""
        if self.predictor is None:
            raise ValueError("this EncoderSpec has no predictor (predictor_dims is None)")
        return self.predictor(z)


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's EMA schedule: ``final - (final - base) * (cos(pi k / K) + 1) / 2``.

    ``base`` at step 0, ``final`` at step ``total_steps`` (steps are clamped to [0, K]).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    k = min(max(int(step), 0), int(total_steps))
    return float(final - (final - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0)


class MomentumEncoder(nn.Module):
    """EMA target network (backbone + projector) of an online :class:`SSLModel`.

    Parameters follow ``theta_t <- m theta_t + (1 - m) theta_o``. Buffers (BN running statistics):
    ``buffers="own"`` (default, as in BYOL / MoCo / solo-learn) leaves them to the target's own
    forward passes in train mode; ``"copy"`` copies the online buffers; ``"ema"`` averages
    floating-point buffers like parameters (integer counters are copied). The target never
    requires gradients; ``forward`` runs under ``torch.no_grad``.
    """

    def __init__(self, online: SSLModel, buffers: Literal["own", "copy", "ema"] = "own") -> None:
        super().__init__()
        if buffers not in ("own", "copy", "ema"):
            raise ValueError(f"buffers must be 'own', 'copy' or 'ema', got {buffers!r}")
        self.buffers_mode = buffers
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)

    @torch.no_grad()
    def update(self, online: SSLModel, momentum: float) -> None:
        """One EMA step towards ``online`` with coefficient ``momentum`` in [0, 1]."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        for name in ("backbone", "projector"):
            target_mod, online_mod = getattr(self, name), getattr(online, name)
            t_params = list(target_mod.parameters())
            o_params = list(online_mod.parameters())
            if len(t_params) != len(o_params):
                raise ValueError(f"online and target {name} have different parameter lists")
            if t_params:
                # lerp_: t + (1 - m) (o - t) = m t + (1 - m) o
                torch._foreach_lerp_(t_params, [p.detach() for p in o_params], 1.0 - momentum)
            if self.buffers_mode == "own":
                continue
            pairs = list(zip(target_mod.buffers(), online_mod.buffers(), strict=True))
            ema = [(t, o) for t, o in pairs if self.buffers_mode == "ema" and t.is_floating_point()]
            copy = [
                (t, o)
                for t, o in pairs
                if not (self.buffers_mode == "ema" and t.is_floating_point())
            ]
            # one multi-tensor kernel per kind instead of one launch per buffer
            if ema:
                torch._foreach_lerp_([t for t, _ in ema], [o for _, o in ema], 1.0 - momentum)
            if copy:
                torch._foreach_copy_([t for t, _ in copy], [o for _, o in copy])


class StateDictMismatchError(ValueError):
    """A state dict does not fit the module built from a spec."""


def strip_prefixes(
    state_dict: Mapping[str, Any], prefixes: tuple[str, ...] = DEFAULT_PREFIXES
) -> dict[str, Any]:
    """Remove wrapper prefixes shared by EVERY key, repeatedly (e.g. ``module._orig_mod.``).

    A prefix carried by only some keys is left alone, so an :class:`SSLModel` state dict (keys
    ``backbone.*`` and ``projector.*``) is returned unchanged; use
    :func:`build_encoder_from_checkpoint_dict` with ``backbone_only=True`` to select a sub-module.
    """
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _check_fits(module: nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: stored {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict
        and isinstance(state_dict[k], Tensor)
        and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[:3]})")
    raise StateDictMismatchError(
        f"state dict does not match {what} - is it for another architecture? " + "; ".join(parts)
    )


def build_encoder_from_checkpoint_dict(
    spec: EncoderSpec | Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    backbone_only: bool = False,
) -> nn.Module:
    """Rebuild an encoder from a stored spec dict and state dict (strict), in eval mode.

    Wrapper prefixes (``module.``, ``_orig_mod.``, ``encoder.``) are stripped first. With
    ``backbone_only=False`` returns an :class:`SSLModel`. With ``backbone_only=True`` returns the
    backbone alone and accepts either a backbone state dict or a full SSLModel state dict (its
    ``backbone.*`` keys are kept, the rest ignored). A state dict for another architecture raises
    :class:`StateDictMismatchError` (a ValueError) naming the first missing / unexpected keys and
    shape mismatches.
    """
    if not isinstance(spec, EncoderSpec):
        spec = EncoderSpec.from_dict(spec)
    sd = strip_prefixes(state_dict, ("module.", "_orig_mod.", "encoder."))
    if backbone_only:
        if any(k.startswith("backbone.") for k in sd):
            sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        sd = strip_prefixes(sd)
        module, _ = build_backbone(spec)
        what = f"the {spec.arch} backbone of {spec}"
    else:
        module = SSLModel(spec)
        what = f"SSLModel({spec})"
    _check_fits(module, sd, what)
    module.load_state_dict(sd, strict=True)
    return module.eval()
