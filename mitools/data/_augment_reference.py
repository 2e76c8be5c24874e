"""Frozen reference: the batched augmentation (``BatchAugment.sample_params`` / ``apply``) as it
was before it was made free of host-device synchronisation (per-subset boolean indexing,
``if mask.any()``, tensors built from Python lists).

Kept verbatim as an independent reference: ``tests/test_data_augment.py`` pins the results of
the current implementation to it (bit for bit on CPU), and ``benchmarks/bench_augment.py`` times
the current implementation against it. Not used by the library. Do not "fix" or modernise it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mitools.data.augment import ViewParams

__all__ = ["reference_apply", "reference_forward", "reference_sample_params"]

_REF_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _ref_gray(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(_REF_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _ref_rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6.0,
        torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0 * maxc)
    return torch.stack((h, s, maxc), 1)


def _ref_hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = hsv.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (n + 6.0 * h) % 6.0
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _ref_per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _ref_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _ref_per_sample(f)).clamp(0.0, 1.0)


def _ref_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    m = (_ref_gray(x) if x.shape[1] == 3 else x).mean((1, 2, 3), keepdim=True)
    f = _ref_per_sample(f)
    return (f * x + (1 - f) * m).clamp(0.0, 1.0)


def _ref_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    f = _ref_per_sample(f)
    return (f * x + (1 - f) * _ref_gray(x)).clamp(0.0, 1.0)


def _ref_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    hsv = _ref_rgb_to_hsv(x)
    hsv = torch.cat(((hsv[:, :1] + _ref_per_sample(f)) % 1.0, hsv[:, 1:]), 1)
    return _ref_hsv_to_rgb(hsv)


_REF_JITTER_OPS = (_ref_brightness, _ref_contrast, _ref_saturation, _ref_hue)


def _ref_gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    t = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).float() ** 2))
    return k / k.sum(1, keepdim=True)


def _ref_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    k = _ref_gaussian_kernels(sigma, size).to(x.dtype).repeat_interleave(c, 0)
    pad = size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)


def _ref_resize_weights(
    start: torch.Tensor, length: torch.Tensor, out: int, size: int
) -> torch.Tensor:
    start, length = start.double().view(-1, 1, 1), length.double().view(-1, 1, 1)
    scale = length / out
    i = torch.arange(out, device=start.device, dtype=torch.float64).view(1, -1, 1)
    j = torch.arange(size, device=start.device, dtype=torch.float64).view(1, 1, -1)
    centre = start + (i + 0.5) * scale
    w = torch.clamp(1.0 - (j + 0.5 - centre).abs() / torch.clamp(scale, min=1.0), min=0.0)
    w = w * ((j >= start) & (j < start + length))
    return w / w.sum(-1, keepdim=True)


def _ref_resized_crop(x: torch.Tensor, crop: torch.Tensor, size: int) -> torch.Tensor:
    top, left, h, w = crop.unbind(1)
    wy = _ref_resize_weights(top, h, size, x.shape[-2]).to(x.dtype)
    wx = _ref_resize_weights(left, w, size, x.shape[-1]).to(x.dtype)
    return wy.unsqueeze(1) @ x @ wx.transpose(1, 2).unsqueeze(1)


def _ref_rotate(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    a = torch.deg2rad(angle_deg.to(x.dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _ref_uniform(n: int, lo: float, hi: float, g, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device, dtype=torch.float64)


def _ref_to_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


@torch.no_grad()
def reference_sample_params(aug, n, in_hw, view, generator=None, device=None) -> ViewParams:
    """Pre-change ``BatchAugment.sample_params`` (frozen copy, see above)."""
    c = aug.preset.view(view)
    g = generator
    if device is None:
        device = g.device if g is not None else "cpu"
    height, width = in_hw
    tries = 10
    area = height * width * _ref_uniform(n * tries, *c.crop_scale, g, device).view(n, tries)
    log_lo, log_hi = math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1])
    ratio = torch.exp(_ref_uniform(n * tries, log_lo, log_hi, g, device)).view(n, tries)
    w = torch.round(torch.sqrt(area * ratio)).long()
    h = torch.round(torch.sqrt(area / ratio)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), 1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
    in_ratio = width / height
    if in_ratio < c.crop_ratio[0]:
        fw, fh = width, int(round(width / c.crop_ratio[0]))
    elif in_ratio > c.crop_ratio[1]:
        fw, fh = int(round(height * c.crop_ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=g, device=device, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h + 1)).long()
    left = torch.floor(u[:, 1] * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    crop = torch.stack((top, left, h, w), 1)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=g, device=device) < p

    color = aug.preset.channels == 3
    flip = coin(c.hflip_p)
    jitter = coin(c.jitter_p) & color
    strengths = (c.brightness, c.contrast, c.saturation)
    factors = torch.stack(
        [_ref_uniform(n, max(0.0, 1 - v), 1 + v, g, device) for v in strengths]
        + [_ref_uniform(n, -c.hue, c.hue, g, device)],
        1,
    ).float()
    identity = factors.new_tensor([1.0, 1.0, 1.0, 0.0]).expand(n, 4)
    factors = torch.where(jitter[:, None], factors, identity)
    order = torch.argsort(torch.rand(n, 4, generator=g, device=device), 1)
    grayscale = coin(c.grayscale_p) & color
    blur = coin(c.blur_p)
    sigma = torch.where(blur, _ref_uniform(n, *c.blur_sigma, g, device).float(), 0.0)
    solarize = coin(c.solarize_p)
    angle = _ref_uniform(n, -c.rotation_deg, c.rotation_deg, g, device).float()
    return ViewParams(
        (height, width), crop, flip, jitter, factors, order, grayscale, blur, sigma, solarize,
        angle,
    )  # fmt: skip


@torch.no_grad()
def reference_apply(aug, x, params, view, generator=None, *, normalize=None) -> torch.Tensor:
    """Pre-change ``BatchAugment.apply`` (frozen copy, see above)."""
    c = aug.preset.view(view)
    x = _ref_to_float(x)
    dev = x.device
    p = params.to(dev)
    x = _ref_resized_crop(x, p.crop, c.size)
    if c.rotation_deg > 0:
        x = _ref_rotate(x, p.angle)
    x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if p.jitter.any():
        for stage in range(4):
            for k, op in enumerate(_REF_JITTER_OPS):
                sel = torch.nonzero(p.jitter & (p.order[:, stage] == k))[:, 0]
                if sel.numel():
                    x[sel] = op(x[sel], p.factors[sel, k])
    if x.shape[1] == 3 and p.grayscale.any():
        x = torch.where(p.grayscale.view(-1, 1, 1, 1), _ref_gray(x).expand_as(x), x)
    if p.blur.any():
        sel = torch.nonzero(p.blur)[:, 0]
        x[sel] = _ref_blur(x[sel], p.sigma[sel], c.blur_kernel)
    if p.solarize.any():
        hit = p.solarize.view(-1, 1, 1, 1) & (x >= c.solarize_threshold)
        x = torch.where(hit, 1.0 - x, x)
    if c.noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        x = (x + c.noise_std * noise).clamp(0.0, 1.0)
    if aug.normalize if normalize is None else normalize:
        x = (x - aug.mean) / aug.std
    return x


def reference_forward(aug, x, generator=None):
    """Pre-change ``BatchAugment.forward``."""
    out = []
    for view in (1, 2):
        p = reference_sample_params(aug, x.shape[0], tuple(x.shape[-2:]), view, generator, x.device)
        out.append(reference_apply(aug, x, p, view, generator))
    return tuple(out)
