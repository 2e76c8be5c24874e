"""Two-view augmentation: the CPU (torchvision v2) and batched paths draw the same parameter
distribution and compute the same image for the same parameters.

Truths: torchvision's own samplers (recorded from the running v2 pipeline) and functional ops
(``torchvision.transforms.v2.functional``), closed forms on a linear ramp image, and two-sample
KS / proportion tests at fixed seeds (each with a negative control showing the test has power).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from mitools.data import (
    DATASET_SPECS,
    PRESET_NAMES,
    AugmentPreset,
    BatchAugment,
    TwoViewTransform,
    ViewConfig,
    ViewParams,
    apply_view_params_cpu,
    eval_transform,
    get_preset,
    loader_transform,
    normalize,
    preset_for,
)
from mitools.data._augment_reference import (  # the pre-change code, frozen to pin results
    reference_apply as _reference_apply,
)
from mitools.data._augment_reference import (
    reference_forward as _reference_forward,
)
from mitools.data._augment_reference import (
    reference_sample_params as _reference_sample_params,
)
from mitools.op_trace import HOST_FACTORY_OPS, MASK_INDEX_OPS, SYNC_OPS, OpCounter

P_MIN = 1e-3  # per-test significance floor at fixed seeds


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# every random operation on, with probabilities away from 0 and 1, on a non-square input
FULL = ViewConfig(
    size=12, crop_scale=(0.08, 1.0), hflip_p=0.5, jitter_p=0.6, grayscale_p=0.3, blur_p=0.5,
    blur_kernel=5, solarize_p=0.4, rotation_deg=15.0,
)  # fmt: skip
FULL_PRESET = AugmentPreset("full", 3, FULL, FULL)
IN_HW = (20, 24)


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Float (3, h, w) in [0, 1]: ramps plus a random low-frequency field (varied hues)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack((xx, yy, 1 - 0.5 * (xx + yy)))
    low = torch.nn.functional.interpolate(
        torch.rand(1, 3, 4, 4, generator=g), (h, w), mode="bilinear"
    )
    return (0.6 * base + 0.4 * low[0]).clamp(0, 1)


def _cpu_params(preset: AugmentPreset, n: int, seed: int, view: int = 1) -> ViewParams:
    t = TwoViewTransform(preset, record=True)
    img = _smooth_image(*IN_HW)
    torch.manual_seed(seed)
    for _ in range(n):
        (t.view1 if view == 1 else t.view2)(img)
    return t.recorded(view)


def _gpu_params(preset: AugmentPreset, n: int, seed: int, view: int = 1) -> ViewParams:
    g = torch.Generator().manual_seed(seed)
    return BatchAugment(preset).sample_params(n, IN_HW, view, g)


def _prop_test(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sided p-value of the two-proportion z-test."""
    x1, x2, n1, n2 = a.sum().item(), b.sum().item(), a.numel(), b.numel()
    p = (x1 + x2) / (n1 + n2)
    if p in (0.0, 1.0):
        return 1.0 if x1 / n1 == x2 / n2 else 0.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return 2 * stats.norm.sf(abs(z))


@pytest.fixture(scope="module")
def sampled():
    torch.set_num_threads(1)
    return _cpu_params(FULL_PRESET, 1200, seed=0), _gpu_params(FULL_PRESET, 4000, seed=1)


def test_parameter_distributions_match(sampled):
    cpu, gpu = sampled
    assert cpu.in_hw == gpu.in_hw == IN_HW
    ks = {
        "area": (cpu.crop_area_fraction(), gpu.crop_area_fraction()),
        "log_aspect": (cpu.crop_aspect_ratio().log(), gpu.crop_aspect_ratio().log()),
        "top": (cpu.crop[:, 0], gpu.crop[:, 0]),
        "left": (cpu.crop[:, 1], gpu.crop[:, 1]),
        "angle": (cpu.angle, gpu.angle),
        "sigma": (cpu.sigma[cpu.blur], gpu.sigma[gpu.blur]),
    }
    for k, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        ks[name] = (cpu.factors[cpu.jitter, k], gpu.factors[gpu.jitter, k])
    # position of each op in the random order
    for k in range(4):
        ks[f"pos{k}"] = (
            (cpu.order[cpu.jitter] == k).float().argmax(1),
            (gpu.order[gpu.jitter] == k).float().argmax(1),
        )
    for name, (a, b) in ks.items():
        p = stats.ks_2samp(a.double().numpy(), b.double().numpy()).pvalue
        assert p > P_MIN, (name, p)
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        a, b = getattr(cpu, name), getattr(gpu, name)
        p = _prop_test(a, b)
        assert p > P_MIN, (name, p, a.float().mean().item(), b.float().mean().item())
    # and the rates are the configured probabilities (binomial test on the larger sample)
    for name, prob in (
        ("flip", 0.5),
        ("jitter", 0.6),
        ("grayscale", 0.3),
        ("blur", 0.5),
        ("solarize", 0.4),
    ):
        b = getattr(gpu, name)
        assert stats.binomtest(int(b.sum()), b.numel(), prob).pvalue > P_MIN, name
    # identity values where an op is off
    assert torch.all(gpu.factors[~gpu.jitter] == torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.all(cpu.factors[~cpu.jitter] == torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.all(gpu.sigma[~gpu.blur] == 0)
    # crops lie inside the image
    for p in (cpu, gpu):
        top, left, h, w = p.crop.unbind(1)
        assert torch.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
        assert torch.all((top + h <= IN_HW[0]) & (left + w <= IN_HW[1]))


def test_distribution_tests_have_power(sampled):
    """Negative controls: the same tests reject a visibly different configuration."""
    cpu, _ = sampled
    other = AugmentPreset(
        "other", 3, ViewConfig(12, crop_scale=(0.2, 1.0), hflip_p=0.4, rotation_deg=12.0, jitter_p=0.6, brightness=0.3),
        FULL,
    )  # fmt: skip
    gpu = _gpu_params(other, 4000, seed=2)
    assert stats.ks_2samp(cpu.crop_area_fraction(), gpu.crop_area_fraction()).pvalue < 1e-6
    assert stats.ks_2samp(cpu.angle, gpu.angle).pvalue < 1e-6
    assert stats.ks_2samp(cpu.factors[cpu.jitter, 0], gpu.factors[gpu.jitter, 0]).pvalue < 1e-6
    assert _prop_test(cpu.flip, gpu.flip) < 1e-3


def test_crop_fallback_is_torchvision_central_crop():
    # aspect ratios 3..4 never fit in a square with area >= 0.9: torchvision falls back
    cfg = ViewConfig(8, crop_scale=(0.9, 1.0), crop_ratio=(3.0, 4.0), jitter_p=0, grayscale_p=0)
    preset = AugmentPreset("fallback", 3, cfg, cfg)
    t = TwoViewTransform(preset, record=True)
    torch.manual_seed(0)
    for _ in range(5):
        t.view1(torch.rand(3, 16, 16))
    cpu = t.recorded(1)
    gpu = BatchAugment(preset).sample_params(5, (16, 16), 1, torch.Generator().manual_seed(0))
    expected = torch.tensor([[5, 0, 5, 16]] * 5)  # w = 16, h = round(16 / 3) = 5, top (16-5)//2
    assert torch.equal(cpu.crop, expected) and torch.equal(gpu.crop, expected)


def test_same_parameters_same_image_on_both_paths():
    """BatchAugment.apply == torchvision functional ops, row by row, for drawn parameter sets."""
    n = 48
    x = torch.stack([_smooth_image(*IN_HW, seed=s) for s in range(n)])
    aug = BatchAugment(FULL_PRESET)
    params = aug.sample_params(n, IN_HW, 1, torch.Generator().manual_seed(3))
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        flags = getattr(params, name)
        assert flags.any() and not flags.all(), name  # both branches exercised
    out = aug.apply(x, params, 1)
    assert out.shape == (n, 3, 12, 12) and out.dtype == torch.float32
    for i in range(n):
        ref = apply_view_params_cpu(x[i], params.row(i), FULL, 3)
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0, msg=f"row {i}")
    # uint8 input is the same as float input / 255
    xu = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(aug.apply(xu, params, 1), aug.apply(xu.float() / 255, params, 1))


def test_recorded_cpu_parameters_replay_the_cpu_pipeline():
    """The recorder captures exactly what torchvision did, and the batched path reproduces it."""
    t = TwoViewTransform(FULL_PRESET, record=True)
    imgs = [_smooth_image(*IN_HW, seed=s) for s in range(24)]
    torch.manual_seed(5)
    outs = [t.view1(img) for img in imgs]
    rec = t.recorded(1)
    batched = BatchAugment(FULL_PRESET).apply(torch.stack(imgs), rec, 1)
    for i, img in enumerate(imgs):
        torch.testing.assert_close(outs[i], apply_view_params_cpu(img, rec.row(i), FULL, 3))
        torch.testing.assert_close(batched[i], outs[i], atol=2e-5, rtol=0)


def test_pil_input_matches_batched_path_to_uint8_rounding():
    """Real use: PIL images through the CPU pipeline vs the uint8 batch through BatchAugment with
    the recorded parameters. The CPU path resizes in uint8 (rounding), so they agree to a few
    grey levels (jitter gains up to 1.4 amplify the rounding), not to float precision."""
    preset = get_preset("cifar", asymmetric=True)
    t = TwoViewTransform(preset, record=True)
    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(48)]
    torch.manual_seed(0)
    outs = torch.stack([t(Image.fromarray(a))[1] for a in arrs])
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrs])
    diff = (BatchAugment(preset).apply(x, t.recorded(2), 2) - outs).abs() * 255
    assert diff.max() < 6 and diff.mean() < 0.6, (diff.max().item(), diff.mean().item())


def _ramp(h: int, w: int) -> torch.Tensor:
    """Channel 0 = column index, channel 1 = row index, channel 2 = constant (in pixel units / 100)."""
    yy, xx = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    return torch.stack((xx, yy, torch.full_like(xx, 50.0))).float() / 100


@pytest.mark.parametrize("box", [(3, 5, 10, 12), (7, 2, 13, 9), (0, 0, 40, 36), (7, 2, 30, 25)])
def test_crop_and_flip_of_a_ramp(box):
    """Enlarging crops (box <= 16 px) are bilinear with half-pixel centres: on a linear ramp output
    pixel i equals the input coordinate start + (i + 1/2) length / 16 - 1/2 exactly (away from the
    clamped border). Shrinking crops use the antialiased triangle filter of width max(scale, 1),
    whose discrete first moment is not exactly zero: the ramp is then reproduced to 0.1 px. In all
    cases the batched path equals torchvision's resized_crop + horizontal_flip."""
    top, left, h, w = box
    size = 16
    cfg = ViewConfig(size, jitter_p=0, grayscale_p=0)
    aug = BatchAugment(AugmentPreset("ramp", 3, cfg, cfg))
    x = _ramp(40, 36)[None].repeat(2, 1, 1, 1)
    params = aug.sample_params(2, (40, 36), 1, torch.Generator().manual_seed(0))
    params.crop[:] = torch.tensor(box)
    params.flip[:] = torch.tensor([False, True])
    out = aug.apply(x, params, 1)
    i = torch.arange(size).double()
    cols = left + (i + 0.5) * w / size - 0.5
    rows = top + (i + 0.5) * h / size - 0.5
    inner_c = (cols >= left) & (cols <= left + w - 1)
    inner_r = (rows >= top) & (rows <= top + h - 1)
    enlarging = h <= size and w <= size
    if not enlarging:  # the filter window must also stay inside the crop
        sx, sy = w / size, h / size
        inner_c &= (cols - sx + 0.5 >= left) & (cols + sx - 0.5 <= left + w - 1)
        inner_r &= (rows - sy + 0.5 >= top) & (rows + sy - 0.5 <= top + h - 1)
    assert inner_c.sum() >= size // 2 and inner_r.sum() >= size // 2
    tol = 1e-5 if enlarging else 0.1 / 100
    got = out[0].double()
    torch.testing.assert_close(
        got[0][:, inner_c], (cols[inner_c] / 100).expand(size, -1), atol=tol, rtol=0
    )
    torch.testing.assert_close(
        got[1][inner_r], (rows[inner_r, None] / 100).expand(-1, size), atol=tol, rtol=0
    )
    torch.testing.assert_close(got[2], torch.full((size, size), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out[1], out[0].flip(-1))
    for k in range(2):  # torchvision gives the same images
        ref = apply_view_params_cpu(x[k], params.row(k), cfg, 3)
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def test_presets_shapes_dtypes_and_asymmetry():
    for name in PRESET_NAMES:
        for asym in (False, True):
            preset = get_preset(name, asymmetric=asym)
            c = preset.channels
            size = preset.view1.size
            if c == 3:
                in_size = (300, 250) if name == "imagenet100" else (size, size)
                arr = np.random.default_rng(0).integers(0, 256, (*in_size[::-1], 3), dtype=np.uint8)
                img = Image.fromarray(arr)
            else:
                img = torch.rand(1, 8, 8)
            v1, v2 = TwoViewTransform(preset)(img)
            assert v1.shape == v2.shape == (c, size, size) and v1.dtype == torch.float32
            batch = torch.randint(0, 256, (3, c, size + 4, size + 4), dtype=torch.uint8)
            b1, b2 = BatchAugment(preset)(batch, torch.Generator().manual_seed(0))
            assert b1.shape == b2.shape == (3, c, size, size) and b1.dtype == torch.float32
            assert 0.0 <= b1.min() and b1.max() <= 1.0  # no mean/std given: not normalised
    cifar = get_preset("cifar")
    assert cifar.view1.blur_p == cifar.view2.blur_p == 0 and cifar.view1.size == 32
    in100 = get_preset("imagenet100", asymmetric=True)
    assert (in100.view1.blur_p, in100.view2.blur_p) == (1.0, 0.1)
    assert (in100.view1.solarize_p, in100.view2.solarize_p) == (0.0, 0.2)
    assert in100.view1.blur_kernel == 23 and in100.view1.size == 224
    sym = get_preset("stl10")
    assert sym.view1 == sym.view2 and sym.view1.blur_p == 0.5 and sym.view1.size == 96
    assert get_preset("tiny_imagenet").view1.size == 64
    digits = get_preset("digits")
    assert digits.channels == 1 and digits.view1.hflip_p == 0 and digits.view1.jitter_p == 0


# ----------------------------------------------------------------------------- preset values
#
# Where the numbers come from (the standard protocols; crop/blur/solarise as BYOL defines them):
# * BYOL (Grill et al. 2020, appendix B, table 6): random resized crop scale (0.08, 1) and aspect
#   (3/4, 4/3), flip p 0.5, colour jitter brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 at
#   p 0.8, grayscale p 0.2, Gaussian blur sigma U(0.1, 2) with p 1.0 (view 1) / 0.1 (view 2),
#   solarisation (threshold 0.5) with p 0.0 / 0.2.
# * solo-learn scripts/pretrain/imagenet-100/augmentations/asymmetric.yaml: the same, crop 224.
#   scripts/pretrain/cifar/augmentations/asymmetric.yaml: the same but gaussian_blur prob 0.0 in
#   both views (CIFAR never blurs), solarization 0.0 / 0.2, crop 32.
# * Symmetric (SimCLR-style): blur p 0.5 in both views, no solarisation (SimCLR appendix A; solo-learn
#   imagenet-100/augmentations/symmetric.yaml gaussian_blur prob 0.5). The jitter strengths stay at
#   BYOL's 0.4/0.4/0.2/0.1 (solo-learn's symmetric.yaml uses SimCLR's 0.8/0.8/0.8/0.2; the code's
#   docstrings say "BYOL/solo-learn strengths" for every colour preset). CIFAR does not blur
#   symmetric either (SimCLR's CIFAR-10 setting; solo-learn's cifar/symmetric.yaml blurs with p 0.5).
# * Blur kernels: odd, about 10 % of the crop side (SimCLR appendix A): 23 at 224 (BYOL), 9 at 96,
#   7 at 64; 3 at 32 (unused, cifar never blurs).
# * digits (8x8 grey) is this project's own setting (mitools.data.augment.get_preset docstring,
#   DIGITS_CROP_SCALE measured there): crop scale (0.7, 1), rotation +-10 degrees, noise std 0.05, no
#   flip, no colour operations; asymmetric has no effect.

_COLOUR_VIEW = dict(
    crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip_p=0.5, jitter_p=0.8, brightness=0.4,
    contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2, blur_sigma=(0.1, 2.0),
    solarize_threshold=0.5, rotation_deg=0.0, noise_std=0.0,
)  # fmt: skip
_DIGITS_VIEW = dict(
    size=8, crop_scale=(0.7, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip_p=0.0, jitter_p=0.0,
    brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,  # inert: jitter_p is 0
    grayscale_p=0.0, blur_p=0.0, blur_kernel=3, blur_sigma=(0.1, 2.0), solarize_p=0.0,
    solarize_threshold=0.5, rotation_deg=10.0, noise_std=0.05,
)  # fmt: skip
_SIZE_AND_KERNEL = {
    "cifar": (32, 3),
    "stl10": (96, 9),
    "tiny_imagenet": (64, 7),
    "imagenet100": (224, 23),
}
# (blur_p, solarize_p) of (view 1, view 2)
_SYMMETRIC_BLUR_SOLARIZE = ((0.5, 0.0), (0.5, 0.0))
_BYOL_BLUR_SOLARIZE = ((1.0, 0.0), (0.1, 0.2))
_CIFAR_BLUR_SOLARIZE = {False: ((0.0, 0.0), (0.0, 0.0)), True: ((0.0, 0.0), (0.0, 0.2))}


def _expected_view(preset: str, asymmetric: bool, view: int) -> dict:
    """Every ViewConfig field of view ``view`` of preset ``preset``, from the table above."""
    if preset == "digits":
        return dict(_DIGITS_VIEW)
    size, kernel = _SIZE_AND_KERNEL[preset]
    if preset == "cifar":
        blur_solarize = _CIFAR_BLUR_SOLARIZE[asymmetric]
    else:
        blur_solarize = _BYOL_BLUR_SOLARIZE if asymmetric else _SYMMETRIC_BLUR_SOLARIZE
    blur_p, solarize_p = blur_solarize[view - 1]
    return dict(_COLOUR_VIEW, size=size, blur_kernel=kernel, blur_p=blur_p, solarize_p=solarize_p)


# dataset -> augmentation preset (DatasetSpec.augmentation), the route preset_for takes
_PRESET_OF_DATASET = {
    "cifar10": "cifar", "cifar100": "cifar", "stl10": "stl10", "tiny_imagenet": "tiny_imagenet",
    "imagenet100": "imagenet100", "digits": "digits",
}  # fmt: skip


def test_preset_values_pin_the_standard_protocols():
    """Every field of both views of every preset, symmetric and asymmetric, equals the table above
    (exact float equality: the values are written the same way in the code)."""
    assert set(PRESET_NAMES) == {*_SIZE_AND_KERNEL, "digits"}
    view_fields = {f.name for f in dataclasses.fields(ViewConfig)}
    for name in PRESET_NAMES:
        for asymmetric in (False, True):
            preset = get_preset(name, asymmetric=asymmetric)
            assert preset.name == name + ("_asym" if asymmetric else "")
            assert preset.channels == (1 if name == "digits" else 3)
            assert preset.mean is None and preset.std is None
            for view in (1, 2):
                expected = _expected_view(name, asymmetric, view)
                assert set(expected) == view_fields, "a ViewConfig field is missing from the table"
                got = dataclasses.asdict(preset.view(view))
                wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
                assert not wrong, (name, asymmetric, view, "got, expected:", wrong)
    for dataset, name in _PRESET_OF_DATASET.items():
        spec = DATASET_SPECS[dataset]
        assert spec.augmentation == name
        for asymmetric in (False, True):
            preset = preset_for(dataset, asymmetric=asymmetric)
            assert (preset.mean, preset.std) == (spec.mean, spec.std)
            raw = preset_for(dataset, asymmetric=asymmetric, normalize=False)
            assert raw.mean is None and raw.std is None
            for p in (preset, raw):
                for view in (1, 2):
                    assert dataclasses.asdict(p.view(view)) == _expected_view(
                        name, asymmetric, view
                    )


def test_determinism_with_seeds():
    preset = preset_for("cifar10", asymmetric=True)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    t = TwoViewTransform(preset)
    torch.manual_seed(7)
    a = t(img)
    torch.manual_seed(7)
    b = t(img)
    torch.manual_seed(8)
    c = t(img)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    aug = BatchAugment(preset)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    r1 = aug(x, torch.Generator().manual_seed(3))
    r2 = aug(x, torch.Generator().manual_seed(3))
    r3 = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1]) and not torch.equal(r1[0], r3[0])
    assert not torch.equal(r1[0], r1[1])  # the two views differ
    assert pickle.loads(pickle.dumps(t)).preset == preset  # spawnable DataLoader workers


def test_normalize_step():
    preset = preset_for("cifar10")
    mean, std = torch.tensor(preset.mean).view(3, 1, 1), torch.tensor(preset.std).view(3, 1, 1)
    x = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(normalize(x, preset.mean, preset.std), (x - mean) / std)
    raw = get_preset("cifar")
    img = torch.rand(3, 32, 32)
    torch.manual_seed(0)
    a = TwoViewTransform(preset)(img)[0]
    torch.manual_seed(0)
    b = TwoViewTransform(raw)(img)[0]
    torch.testing.assert_close(a, (b - mean) / std)
    xb = torch.rand(4, 3, 32, 32)
    aug_n, aug_raw = BatchAugment(preset), BatchAugment(raw)
    params = aug_n.sample_params(4, (32, 32), 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        aug_n.apply(xb, params, 1), (aug_raw.apply(xb, params, 1) - mean) / std
    )
    torch.testing.assert_close(
        aug_n.apply(xb, params, 1, normalize=False), aug_raw.apply(xb, params, 1)
    )
    with pytest.raises(ValueError, match="1 means"):
        normalize(x, (0.5,), (0.2,))


def test_digits_noise_and_rotation():
    preset = get_preset("digits")
    aug = BatchAugment(preset)
    x = torch.full((400, 1, 8, 8), 0.5)
    params = aug.sample_params(400, (8, 8), 1, torch.Generator().manual_seed(0))
    params.angle.zero_()
    noisy = aug.apply(x, params, 1, torch.Generator().manual_seed(1))
    resid = (noisy - 0.5).flatten()
    assert abs(resid.mean().item()) < 3 * 0.05 / math.sqrt(resid.numel())
    assert abs(resid.std().item() / 0.05 - 1) < 0.02
    # CPU path noise has the same scale
    t = TwoViewTransform(preset, record=True)
    torch.manual_seed(0)
    cpu_resid = torch.stack([t.view1(torch.full((1, 8, 8), 0.5)) for _ in range(200)])
    rec = t.recorded(1)
    replay = torch.stack(
        [
            apply_view_params_cpu(torch.full((1, 8, 8), 0.5), rec.row(i), preset.view1, 1)
            for i in range(200)
        ]
    )
    centre = (cpu_resid - replay)[..., 3:5, 3:5].flatten()  # rotation leaves the centre at 0.5
    assert abs(centre.std().item() / 0.05 - 1) < 0.1
    assert (
        stats.ks_2samp(
            rec.angle, aug.sample_params(2000, (8, 8), 1, torch.Generator().manual_seed(2)).angle
        ).pvalue
        > P_MIN
    )


def test_eval_and_loader_transforms():
    img = Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8))
    assert eval_transform("imagenet100")(img).shape == (3, 224, 224)
    assert eval_transform("cifar10")(Image.fromarray(np.zeros((32, 32, 3), np.uint8))).shape == (
        3,
        32,
        32,
    )
    t = loader_transform("imagenet100")(img)
    assert t.shape == (3, 256, 256) and t.dtype == torch.uint8 and type(t) is torch.Tensor
    assert loader_transform("digits")(torch.rand(1, 8, 8)).dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="hflip_p"):
        ViewConfig(32, hflip_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel"):
        ViewConfig(32, blur_kernel=4)
    with pytest.raises(ValueError, match="did you mean 'imagenet100'"):
        get_preset("imagenet")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        BatchAugment(get_preset("cifar"))(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="uint8 or float"):
        BatchAugment(get_preset("cifar"))(torch.ones(2, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        get_preset("digits", mean=(0.1, 0.2, 0.3), std=(1, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    preset = preset_for("stl10", asymmetric=True)
    aug = BatchAugment(preset)
    x = torch.randint(0, 256, (16, 3, 100, 100), dtype=torch.uint8)
    params = aug.sample_params(16, (100, 100), 1, torch.Generator().manual_seed(0))
    cpu = aug.apply(x, params, 1)
    gpu = aug.to("cuda").apply(x.cuda(), params.to("cuda"), 1)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    v1, v2 = aug(x.cuda(), g)
    assert v1.device.type == "cuda" and v1.shape == (16, 3, 96, 96)


# ----------------------------------------------------------------------------- sync-free path


# ops that read device values on the host (synchronise) or build tensors from host data
# (``torch.tensor`` / ``new_tensor`` / boolean-mask assignment of a value: ``lift_fresh``)
_SYNC_OPS = SYNC_OPS | MASK_INDEX_OPS | HOST_FACTORY_OPS  # stricter: no indexing at all

_EXACT_PRESETS = {
    "cifar": (get_preset("cifar"), 36),
    "cifar_asym_normalized": (preset_for("cifar10", asymmetric=True), 32),  # solarize, normalize
    "stl10": (get_preset("stl10"), 100),  # blur p = 0.5
    "stl10_asym": (get_preset("stl10", asymmetric=True), 100),  # blur 1 / 0.1, solarize
    "digits": (get_preset("digits"), 10),  # rotation + noise
    "full": (FULL_PRESET, 20),  # non-square input, every op
}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(_EXACT_PRESETS))
def test_apply_and_forward_match_frozen_reference(name):
    """Drawn parameters: apply == the pre-change implementation to float rounding, both views;
    forward (sample_params + apply, noise from the same generator) == the pre-change forward."""
    preset, side = _EXACT_PRESETS[name]
    n = 24 if preset.view1.size > 32 else 64
    hw = (side, side + 4) if name == "full" else (side, side)
    g = torch.Generator().manual_seed(11)
    if preset.channels == 3:
        x = torch.randint(0, 256, (n, 3, *hw), dtype=torch.uint8, generator=g)
    else:
        x = torch.rand(n, 1, *hw, generator=g)
    aug = BatchAugment(preset)
    for view in (1, 2):
        params = aug.sample_params(n, hw, view, torch.Generator().manual_seed(view))
        ref_params = _reference_sample_params(aug, n, hw, view, torch.Generator().manual_seed(view))
        for f in ("crop", "flip", "jitter", "factors", "order", "grayscale", "blur", "sigma"):
            assert torch.equal(getattr(params, f), getattr(ref_params, f)), f
        new = aug.apply(x, params, view, torch.Generator().manual_seed(5))
        ref = _reference_apply(aug, x, params, view, torch.Generator().manual_seed(5))
        assert _max_diff(new, ref) <= 1e-6, (name, view)
    new = aug(x, torch.Generator().manual_seed(3))
    ref = _reference_forward(aug, x, torch.Generator().manual_seed(3))
    assert max(_max_diff(a, b) for a, b in zip(new, ref, strict=True)) <= 1e-6


def _hand_params(n: int, hw: tuple[int, int], seed: int, on: str) -> ViewParams:
    """Parameters with all 24 jitter orders (cycled); ``on``: "mixed", "all" or "none"."""
    g = torch.Generator().manual_seed(seed)
    p = BatchAugment(FULL_PRESET).sample_params(n, hw, 1, g)
    perms = torch.tensor(list(itertools.permutations(range(4))))
    p.order = perms[torch.arange(n) % 24]
    if on != "mixed":
        for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
            getattr(p, name).fill_(on == "all")
    factors = torch.stack(
        (
            0.6 + 0.8 * torch.rand(n, generator=g),
            0.6 + 0.8 * torch.rand(n, generator=g),
            0.8 + 0.4 * torch.rand(n, generator=g),
            -0.1 + 0.2 * torch.rand(n, generator=g),
        ),
        1,
    )
    p.factors = torch.where(p.jitter[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    p.sigma = torch.where(p.blur, 0.1 + 1.9 * torch.rand(n, generator=g), 0.0)
    return p


@pytest.mark.parametrize("on", ["mixed", "all", "none"])
def test_apply_matches_frozen_reference_every_jitter_order(on):
    n, hw = 96, IN_HW
    x = torch.stack([_smooth_image(*hw, seed=s) for s in range(n)])
    x = torch.where(torch.arange(n).view(-1, 1, 1, 1) % 3 == 0, torch.rand_like(x), x)  # + noise
    params = _hand_params(n, hw, seed=7, on=on)
    if on == "mixed":
        assert params.jitter.any() and not params.jitter.all()
        on_orders = {tuple(o) for o in params.order[params.jitter].tolist()}
        assert len(on_orders) == 24  # every permutation among the jittered samples
    aug = BatchAugment(FULL_PRESET)
    new, ref = aug.apply(x, params, 1), _reference_apply(aug, x, params, 1)
    assert _max_diff(new, ref) <= 1e-6
    if on == "none":  # crop + resize only: no step may have touched the pixels
        cfg = ViewConfig(12, hflip_p=0, jitter_p=0, grayscale_p=0, rotation_deg=15.0)
        plain = BatchAugment(AugmentPreset("plain", 3, cfg, cfg))
        assert _max_diff(new, plain.apply(x, params, 1)) == 0.0


def test_reference_and_new_jitter_differ_when_orders_differ():
    """Power check for the exactness tests: a different op order changes the image by >> 1e-6."""
    n, hw = 48, IN_HW
    x = torch.stack([_smooth_image(*hw, seed=s) for s in range(n)])
    params = _hand_params(n, hw, seed=7, on="all")
    aug = BatchAugment(FULL_PRESET)
    swapped = _hand_params(n, hw, seed=7, on="all")
    swapped.order = swapped.order.flip(1)
    assert _max_diff(aug.apply(x, swapped, 1), _reference_apply(aug, x, params, 1)) > 1e-3


def _count_ops(fn) -> Counter[str]:
    with OpCounter() as counter:
        fn()
    return counter.counts


@pytest.mark.parametrize("name", ["cifar_asym_normalized", "stl10_asym", "digits", "full"])
def test_forward_does_not_synchronise(name):
    """No op of forward reads a device value on the host or copies host data to the device; the
    pre-change code does (the check has power)."""
    preset, side = _EXACT_PRESETS[name]
    aug = BatchAugment(preset)
    hw = (side, side + 4) if name == "full" else (side, side)
    x = torch.randint(0, 256, (8, preset.channels, *hw), dtype=torch.uint8)
    if preset.channels == 1:
        x = x.float() / 255
    counts = _count_ops(lambda: aug(x, torch.Generator().manual_seed(0)))
    assert not _SYNC_OPS & set(counts), {k: counts[k] for k in _SYNC_OPS & set(counts)}
    old = _count_ops(lambda: _reference_forward(aug, x, torch.Generator().manual_seed(0)))
    assert _SYNC_OPS & set(old)


def test_forward_runs_on_meta_tensors():
    """Meta tensors carry no data: any data-dependent step (``.any()``, ``nonzero``, a boolean
    mask's size) raises. forward runs on them, the pre-change code does not."""
    for name in ("cifar_asym_normalized", "stl10_asym", "full"):
        preset, side = _EXACT_PRESETS[name]
        aug = BatchAugment(preset).to("meta")
        x = torch.empty(4, 3, side, side, dtype=torch.uint8, device="meta")
        v1, v2 = aug(x)
        assert v1.shape == v2.shape == (4, 3, preset.view1.size, preset.view1.size)
        assert v1.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        _reference_forward(aug, x)


def test_op_count_is_lower_than_before():
    """ATen ops per forward call (a proxy for kernel launches) on the CIFAR preset."""
    aug = BatchAugment(preset_for("cifar10", asymmetric=True))
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    new = sum(_count_ops(lambda: aug(x, torch.Generator().manual_seed(0))).values())
    ref = _count_ops(lambda: _reference_forward(aug, x, torch.Generator().manual_seed(0)))
    old = sum(ref.values())
    assert new < 0.6 * old, (new, old)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_is_sync_free_capturable_and_matches_reference():
    """On CUDA: forward raises no synchronisation under ``set_sync_debug_mode("error")`` (the
    pre-change code does), equals the pre-change forward, and can be captured in a CUDA graph
    whose replay (default generator, same seed) equals eager execution."""
    aug = BatchAugment(preset_for("stl10", asymmetric=True)).cuda()
    x = torch.randint(0, 256, (16, 3, 100, 100), dtype=torch.uint8).cuda()
    g = torch.Generator(device="cuda")
    new = aug(x, g.manual_seed(0))  # warm-up outside the debug mode (lazy cuDNN/cuBLAS init)
    ref = _reference_forward(aug, x, g.manual_seed(0))
    # the depthwise-convolution backend (cuDNN or torch's kernel) is chosen by the number of
    # groups, so blurring the whole batch and a subset round differently (ulps; seen 1.2e-6 after
    # dividing by std ~0.25)
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        aug(x, g.manual_seed(0))
        with pytest.raises(RuntimeError, match="synchroniz"):
            _reference_forward(aug, x, g.manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        aug(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = aug(x)
    torch.cuda.manual_seed(7)
    eager = aug(x)
    torch.cuda.manual_seed(7)
    graph.replay()
    for a, b in zip(static, eager, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    first = static[0].clone()
    graph.replay()  # fresh random parameters on every replay
    assert not torch.equal(first, static[0])


# ----------------------------------------------------------------------------- hybrid path
#
# Workers crop (TwoViewTransform(photometric=False)), the device colours (BatchAugment.photometric).

HYBRID_PRESET = AugmentPreset(
    "hybrid_full", 3, FULL, dataclasses.replace(FULL, blur_p=0.2, solarize_p=0.6, jitter_p=0.9),
    mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3),
)  # fmt: skip


def _pil_images(n: int, hw: tuple[int, int] = IN_HW) -> list[Image.Image]:
    imgs = [(_smooth_image(*hw, seed=s) * 255).round().to(torch.uint8) for s in range(n)]
    return [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in imgs]


@pytest.mark.parametrize("view", [1, 2])
def test_hybrid_same_parameters_same_image_as_cpu_path(view):
    """Per image and seed, the worker half draws the CPU path's crop, rotation and flip (its first
    draws) and returns its uint8 crop; the device half with the CPU path's recorded colour
    parameters then gives the CPU path's view to float precision (both crop in uint8)."""
    n, size = 40, FULL.size
    full = TwoViewTransform(HYBRID_PRESET, record=True)
    geo = TwoViewTransform(HYBRID_PRESET, record=True, photometric=False)
    full_views, crops = [], []
    for seed, img in enumerate(_pil_images(n)):
        torch.manual_seed(seed)
        full_views.append((full.view1 if view == 1 else full.view2)(img))
        torch.manual_seed(seed)
        crops.append((geo.view1 if view == 1 else geo.view2)(img))
    assert all(c.dtype == torch.uint8 and c.shape == (3, size, size) for c in crops)
    assert all(type(c) is torch.Tensor for c in crops)
    rec, rec_geo = full.recorded(view), geo.recorded(view)
    for name in ("crop", "flip", "angle"):
        assert torch.equal(getattr(rec, name), getattr(rec_geo, name)), name
    assert not rec_geo.jitter.any() and not rec_geo.blur.any()  # the worker drew no colours
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        flags = getattr(rec, name)
        assert flags.any() and not flags.all(), name  # both branches exercised
    params = dataclasses.replace(rec, in_hw=(size, size))
    aug = BatchAugment(HYBRID_PRESET)
    out = aug.apply(torch.stack(crops), params, view, geometric=False)
    torch.testing.assert_close(out, torch.stack(full_views), atol=1e-4, rtol=0)
    # power: another image's colour parameters give a visibly different view
    shifted = ViewParams.from_rows(
        [{"in_hw": (size, size), **_row_dict(params, (i + 1) % n)} for i in range(n)]
    )
    other = aug.apply(torch.stack(crops), shifted, view, geometric=False)
    assert (other - torch.stack(full_views)).abs().max() > 0.1


def _row_dict(params: ViewParams, i: int) -> dict:
    return {
        f.name: getattr(params, f.name)[i].tolist()
        for f in dataclasses.fields(params)
        if f.name != "in_hw"
    }


def _view_statistics(views: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-view summaries sensitive to each step: brightness, contrast, colour balance, the
    high-frequency energy (blur), the left-right asymmetry (flip) and the pixel range."""
    v = views.double()
    return {
        "mean": v.mean((1, 2, 3)).numpy(),
        "std": v.std((1, 2, 3)).numpy(),
        "red_minus_blue": (v[:, 0] - v[:, 2]).mean((1, 2)).numpy(),
        "high_freq": (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)).numpy(),
        "left_minus_right": (v[..., : v.shape[-1] // 2] - v[..., v.shape[-1] // 2 :])
        .mean((1, 2, 3))
        .numpy(),
        "max": v.amax((1, 2, 3)).numpy(),
    }


def _hybrid_views(preset: AugmentPreset, img: Image.Image, n: int, seed: int) -> torch.Tensor:
    geo = TwoViewTransform(preset, photometric=False)
    torch.manual_seed(seed)
    pairs = [geo(img) for _ in range(n)]
    v1, v2 = BatchAugment(preset).photometric(
        torch.stack([a for a, _ in pairs]),
        torch.stack([b for _, b in pairs]),
        torch.Generator().manual_seed(seed + 1),
    )
    return torch.cat((v1, v2))


def test_hybrid_output_distribution_matches_cpu_path():
    """End to end, the two views' pixel statistics have the same distribution on both paths
    (two-sample KS at fixed seeds), and the same test rejects a weaker colour jitter."""
    img, n = _pil_images(1)[0], 600
    cpu_path = TwoViewTransform(HYBRID_PRESET)
    torch.manual_seed(0)
    cpu_pairs = [cpu_path(img) for _ in range(n)]
    cpu = torch.cat(
        (torch.stack([a for a, _ in cpu_pairs]), torch.stack([b for _, b in cpu_pairs]))
    )
    hybrid = _hybrid_views(HYBRID_PRESET, img, n, seed=1)
    stats_cpu, stats_hybrid = _view_statistics(cpu), _view_statistics(hybrid)
    for name in stats_cpu:
        p = stats.ks_2samp(stats_cpu[name], stats_hybrid[name]).pvalue
        assert p > P_MIN, (name, p)
    weak = AugmentPreset(
        "weak", 3, dataclasses.replace(HYBRID_PRESET.view1, brightness=0.1),
        dataclasses.replace(HYBRID_PRESET.view2, brightness=0.1), HYBRID_PRESET.mean,
        HYBRID_PRESET.std,
    )  # fmt: skip
    other = _view_statistics(_hybrid_views(weak, img, n, seed=2))
    assert stats.ks_2samp(stats_cpu["mean"], other["mean"]).pvalue < 1e-6


def test_hybrid_device_half_checks_and_is_sync_free():
    aug = BatchAugment(HYBRID_PRESET)
    crops = torch.randint(0, 256, (6, 3, FULL.size, FULL.size), dtype=torch.uint8)
    with pytest.raises(ValueError, match="already cropped to 12x12"):
        aug.photometric(crops, torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        aug.photometric(crops, crops[:, :1])
    v1, v2 = aug.photometric(crops, crops, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (6, 3, 12, 12) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)  # independent draws per view
    counts = _count_ops(lambda: aug.photometric(crops, crops, torch.Generator().manual_seed(0)))
    assert not _SYNC_OPS & set(counts), {k: counts[k] for k in _SYNC_OPS & set(counts)}
    meta = BatchAugment(HYBRID_PRESET).to("meta")
    m = torch.empty(4, 3, 12, 12, dtype=torch.uint8, device="meta")
    assert meta.photometric(m, m)[0].shape == (4, 3, 12, 12)
