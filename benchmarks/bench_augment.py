"""Time of BatchAugment's two-view call (sample_params + apply for both views) against the
pre-change implementation (per-subset boolean indexing, ``if mask.any()``; kept here as a private
frozen copy, ``_reference_apply``), on the same input and seeds.

    python -m benchmarks.bench_augment [--device cpu|cuda] [--batch 256] [--preset cifar]
        [--asymmetric] [--repeats 20] [--graph]

Prints milliseconds per call (median over repeats, device synchronised), the ratio, the number
of ATen ops per call (all ops, and without pure view/metadata ops: an upper bound on kernel
launches) and the max abs difference of the two outputs. ``--graph`` (CUDA only) also captures
the new forward in a CUDA graph (``torch.cuda.graph``, default CUDA generator) and times replays.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mitools.data._augment_reference import (
    reference_forward as _reference_forward,
)
from mitools.data.augment import PRESET_NAMES, BatchAugment, CudaGraphAugment, get_preset
from mitools.op_trace import OpCounter
from mitools.timing import time_calls

# ----------------------------------------------------------------------------- benchmark


def count_ops(fn) -> tuple[int, int]:
    """(all ATen ops, ops that are not views) run by ``fn()``."""
    with OpCounter() as counter:
        fn()
    return counter.total, counter.launches


def time_ms(fn, device: torch.device, repeats: int) -> float:
    return 1e3 * statistics.median(time_calls(fn, device, repeats, warmup=3))


def time_graph_ms(aug: BatchAugment, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(ms per call of :class:`CudaGraphAugment`, the replay the trainer uses: copy in, replay,
    clone out; max |replay - eager| at the same RNG state)."""
    graphed = CudaGraphAugment(aug)
    graphed(x)  # capture
    torch.cuda.manual_seed(123)
    eager = aug(x)
    torch.cuda.manual_seed(123)
    replay = graphed(x)
    diff = max((a - b).abs().max().item() for a, b in zip(replay, eager, strict=True))
    return time_ms(lambda: graphed(x), x.device, repeats), diff


def run(
    device: str, batch: int, preset_name: str, asymmetric: bool, repeats: int, graph: bool
) -> dict[str, float]:
    dev = torch.device(device)
    if graph and dev.type != "cuda":
        raise ValueError(f"--graph needs a CUDA device, got {dev}")
    preset = get_preset(preset_name, asymmetric=asymmetric)
    size = 256 if preset_name == "imagenet100" else preset.view1.size
    aug = BatchAugment(preset).to(dev)
    g_cpu = torch.Generator().manual_seed(0)
    if preset.channels == 3:
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g_cpu)
    else:
        x = torch.rand(batch, 1, size, size, generator=g_cpu)
    x = x.to(dev)
    gen = torch.Generator(device=dev)

    def new() -> tuple[torch.Tensor, torch.Tensor]:
        return aug(x, gen.manual_seed(1))

    def old() -> tuple[torch.Tensor, torch.Tensor]:
        return _reference_forward(aug, x, gen.manual_seed(1))

    diff = max((a - b).abs().max().item() for a, b in zip(new(), old(), strict=True))
    res = {
        "new_ms": time_ms(new, dev, repeats),
        "ref_ms": time_ms(old, dev, repeats),
        "max_abs_diff": diff,
    }
    res["speedup"] = res["ref_ms"] / res["new_ms"]
    res["new_ops"], res["new_ops_no_views"] = count_ops(new)
    res["ref_ops"], res["ref_ops_no_views"] = count_ops(old)
    if graph:
        res["graph_ms"], res["graph_vs_eager_max_abs_diff"] = time_graph_ms(aug, x, repeats)
    print(
        f"{preset.name} batch {batch} {tuple(x.shape[1:])} on {dev} "
        f"(torch threads {torch.get_num_threads()}), two views per call:"
    )
    for key, label in (("new", "new BatchAugment"), ("ref", "frozen reference")):
        ms, ops, ops_nv = res[f"{key}_ms"], res[f"{key}_ops"], res[f"{key}_ops_no_views"]
        print(f"  {label:18s} {ms:9.2f} ms  ATen ops {ops} ({ops_nv} non-view)")
    print(f"  speed-up {res['speedup']:.2f}x, max |new - reference| = {diff:.3g}")
    if graph:
        gdiff = res["graph_vs_eager_max_abs_diff"]
        print(f"  CUDA graph replay  {res['graph_ms']:9.2f} ms (vs eager, same seed: {gdiff:.3g})")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--preset", default="cifar", choices=PRESET_NAMES)
    parser.add_argument("--asymmetric", action="store_true", help="BYOL-style asymmetric views")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--graph", action="store_true", help="also time a CUDA-graph replay")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run(args.device, args.batch, args.preset, args.asymmetric, args.repeats, args.graph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
