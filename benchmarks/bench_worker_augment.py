"""Per-image cost in a DataLoader worker of the three augmentation modes, on JPEGs of ImageNet size.

    python -m benchmarks.bench_worker_augment [--preset imagenet100] [--images 64] [--repeats 3]
        [--width 500 --height 375] [--device cpu|cuda] [--batch 256]

Each worker is one process on one CPU thread, so the worker half is timed with
``torch.set_num_threads(1)``: JPEG decoding (PIL, from bytes in memory, as from the page cache)
plus, per ``data.augment`` mode of the trainer,

* ``workers``: the whole two-view augmentation (``TwoViewTransform``);
* ``hybrid``: crop, rotation and flip only (``TwoViewTransform(photometric=False)``, uint8 out);
* ``batch``: the fixed-size unaugmented tensor (``loader_transform``: resize + centre crop).

Prints milliseconds per image (median over repeats of the mean over ``--images`` images), the
images/s one worker sustains, and the ratio of each mode to ``workers``. The device half of
``hybrid`` (``BatchAugment.photometric`` on a batch of crops) is timed on ``--device`` with all
threads; on a GPU it is what the trainer replays as a CUDA graph.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from mitools.data.augment import (
    BatchAugment,
    TwoViewTransform,
    get_preset,
    loader_transform,
)
from mitools.timing import time_calls


def synthetic_jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEG files (quality 90) of smooth colour fields plus texture, so that decoding
    costs what a natural photograph of that size costs (a flat image decodes faster)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.random((height // 25 + 2, width // 25 + 2, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 12, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def worker_ms_per_image(transform, files: list[bytes], repeats: int) -> float:
    """Median over ``repeats`` of the mean time per image of decode + ``transform``."""

    def one_pass() -> float:
        t0 = time.perf_counter()
        for data in files:
            with Image.open(io.BytesIO(data)) as img:
                transform(img.convert("RGB"))
        return (time.perf_counter() - t0) / len(files)

    one_pass()  # warm-up (lazy imports, allocator)
    return 1e3 * statistics.median(one_pass() for _ in range(repeats))


def run(
    preset_name: str, n_images: int, repeats: int, width: int, height: int, device: str,
    batch: int,
) -> dict[str, float]:  # fmt: skip
    preset = get_preset(preset_name)
    files = synthetic_jpegs(n_images, width, height)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        modes = {
            "workers": TwoViewTransform(preset),
            "hybrid": TwoViewTransform(preset, photometric=False),
            "batch": loader_transform(preset_name),
            "decode only": lambda img: img,
        }
        res = {f"{m}_ms": worker_ms_per_image(t, files, repeats) for m, t in modes.items()}
    finally:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    aug = BatchAugment(preset).to(dev)
    size = preset.view1.size
    g = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)]
    crops = [c.to(dev) for c in crops * 2]
    gen = torch.Generator(device=dev).manual_seed(1)
    times = time_calls(lambda: aug.photometric(*crops, gen), dev, repeats, warmup=1)
    res["device_half_ms_per_image"] = 1e3 * statistics.median(times) / batch
    print(
        f"preset {preset.name}, {n_images} JPEGs {width}x{height}, one worker thread "
        f"(decode + transform, two views per image):"
    )
    for mode in modes:
        ms = res[f"{mode}_ms"]
        ratio = res["workers_ms"] / ms
        print(f"  {mode:12s} {ms:7.2f} ms/image  {1e3 / ms:7.0f} images/s per worker  "
              f"({ratio:.2f}x the workers mode's rate)")  # fmt: skip
    print(
        f"  hybrid's device half (BatchAugment.photometric, batch {batch}, {dev}, "
        f"{threads} threads): {res['device_half_ms_per_image']:.3f} ms/image"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="imagenet100")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    run(args.preset, args.images, args.repeats, args.width, args.height, args.device, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
