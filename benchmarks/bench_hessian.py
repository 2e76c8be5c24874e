"""Hessian spectra, mitools.hessian vs PyHessian 0.1, same model, batch and iteration counts.

    python -m benchmarks.bench_hessian [--quick] [--threads 1] [--configs ...] [--repeats 3]
        [--quantities top1 trace density] [--engines auto] [--out results/bench]

Small CNNs (``small_cnn``; projector 32-16 without BN) on one frozen batch of augmented digits
view pairs, SimCLR loss, float32: widths 4-8 with batch 64 (1.2k params), widths 8-16-32 with
batch 128 (7.5k params), and (opt-in, slow: ``--configs cnn_16_32_64_b128``) widths 16-32-64 with
batch 128 (29k params). ``--configs resnet18_cifar_b64`` is the issue's GPU case: ResNet-18 with
the CIFAR stem (11M params, BN in eval mode) on 64 pairs of random 32x32 RGB views (no dataset
needed). ``--device cuda`` runs everything on the GPU (timings synchronise the device). Timed,
each including operator / PyHessian construction (the first forward + backward):

- top-1 eigenvalue with 20 products: our Lanczos (max_iter=20; +1 product for the true
  residual) vs PyHessian's power iteration (maxIter=20, tol=-inf);
- trace with 64 probes: our Hutchinson through ``matmat`` (one batched ``torch.func`` pass over
  the 64 probes; ``--engines`` picks the operator's ``hvp`` engine(s), e.g. ``vjp func`` to
  compare them in one run) vs PyHessian's 64 sequential double-backward products;
- density with 64 Lanczos steps, one run: ours vs PyHessian's (with the torch.eig shim).

Ours and PyHessian's are timed alternately (ours, theirs, ours, theirs, ...) so that load drift on
a shared machine hits both alike; ``speedup`` is the median over repeats of the paired ratio
PyHessian time / our time (> 1: ours faster), ``speedup_min`` / ``speedup_max`` its spread.
Writes bench_hessian.csv.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from mitools.data import BatchAugment, build_dataset, get_preset
from mitools.hessian import (
    HessianOperator,
    freeze_views,
    pyhessian_density,
    pyhessian_top_eigenvalues,
    pyhessian_trace,
    spectral_density,
    top_eigenvalues,
    trace,
)
from mitools.losses import build_loss
from mitools.models import EncoderSpec, SSLModel

CONFIGS = {
    "cnn_4_8_b64": ([4, 8], 64),
    "cnn_8_16_32_b128": ([8, 16, 32], 128),
    "cnn_16_32_64_b128": ([16, 32, 64], 128),
    "resnet18_cifar_b64": (None, 64),  # widths None: ResNet-18, CIFAR stem, random RGB views
}
DEFAULT_CONFIGS = ["cnn_4_8_b64", "cnn_8_16_32_b128"]
QUANTITIES = ("top1", "trace", "density")


def setup(batch: int, widths: list[int] | None = (8, 16, 32), seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    if widths is None:
        spec = EncoderSpec(
            arch="resnet18", cifar_stem=True, in_channels=3, projector_dims=[512, 128]
        )
        g = torch.Generator().manual_seed(seed)
        x1, x2 = torch.rand(2, batch, 3, 32, 32, generator=g)
    else:
        spec = EncoderSpec(
            arch="small_cnn",
            in_channels=1,
            widths=list(widths),
            projector_dims=[32, 16],
            projector_bn=False,
            projector_last_bn=False,
        )
        ds = build_dataset("digits", None, "train")
        x1, x2 = freeze_views(_images(ds), batch, BatchAugment(get_preset("digits")), seed=seed)
    model = SSLModel(spec).eval().to(device)
    x1, x2 = x1.to(device), x2.to(device)
    loss = build_loss("simclr", check_finite=False).eval()

    def loss_fn(m, b):
        return loss(m(b[0])[1], m(b[1])[1])

    return model, loss_fn, (x1, x2)


def _images(ds) -> torch.Tensor:
    xs = [torch.as_tensor(ds[i][0]) for i in range(len(ds))]
    return torch.stack(xs).float()


def _timed(fn, device: str = "cpu") -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def run(
    config: str,
    repeats: int = 3,
    iters: int = 20,
    probes: int = 64,
    steps: int = 64,
    quantities: tuple[str, ...] = QUANTITIES,
    engines: tuple[str, ...] = ("auto",),
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per (quantity, engine); ``engines`` (HessianOperator ``hvp``) apply to the trace,
    top-1 and density always use the default ``auto`` (single-vector products)."""
    widths, batch = CONFIGS[config]
    model, fn, b = setup(batch, widths, device=device)
    n = sum(p.numel() for p in model.parameters())

    def ours_of(name: str, engine: str):
        if name == "top1":
            return lambda: top_eigenvalues(
                HessianOperator(model, fn, b), k=1, tol=1e-30, max_iter=iters
            ).eigenvalues[0]
        if name == "trace":
            return lambda: (
                trace(
                    HessianOperator(model, fn, b, hvp=engine), "hutchinson", probes, seed=0
                ).estimate
            )
        return lambda: spectral_density(HessianOperator(model, fn, b), runs=1, steps=steps).moment(
            2
        )

    theirs = {
        "top1": lambda: pyhessian_top_eigenvalues(
            model, fn, b, k=1, max_iter=iters, tol=-math.inf
        ).eigenvalues[0],
        "trace": lambda: pyhessian_trace(model, fn, b, n_probes=probes, seed=0).estimate,
        "density": lambda: pyhessian_density(model, fn, b, steps=steps, runs=1).moment(2),
    }
    rows = []
    for name in quantities:
        engs = engines if name == "trace" else ("auto",)
        ours = {e: ours_of(name, e) for e in engs}
        for f in ours.values():
            f()  # warm-up (torch.func tracing caches, allocator)
        t_ours: dict[str, list[float]] = {e: [] for e in engs}
        t_theirs: list[float] = []
        ratios: dict[str, list[float]] = {e: [] for e in engs}
        v_o: dict[str, object] = {}
        v_p = None
        for _ in range(repeats):
            for e in engs:
                t, v_o[e] = _timed(ours[e], device)
                t_ours[e].append(t)
            t_p, v_p = _timed(theirs[name], device)
            t_theirs.append(t_p)
            for e in engs:
                ratios[e].append(t_p / t_ours[e][-1])
        for e in engs:
            rows.append(
                {
                    "config": config,
                    "quantity": name,
                    "engine": e,
                    "n_params": n,
                    "batch": batch,
                    "device": device,
                    "ours_s": statistics.median(t_ours[e]),
                    "pyhessian_s": statistics.median(t_theirs),
                    "speedup": statistics.median(ratios[e]),
                    "speedup_min": min(ratios[e]),
                    "speedup_max": max(ratios[e]),
                    "repeats": repeats,
                    "ours_value": float(v_o[e]),
                    "pyhessian_value": float(v_p),
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quantities", nargs="+", default=list(QUANTITIES), choices=QUANTITIES)
    parser.add_argument(
        "--engines", nargs="+", default=["auto"], choices=["auto", "vjp", "func", "graph"]
    )
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    configs = args.configs[:1] if args.quick else args.configs
    repeats = 1 if args.quick else args.repeats
    df = pd.concat(
        [
            run(
                c,
                repeats=repeats,
                quantities=tuple(args.quantities),
                engines=tuple(args.engines),
                device=args.device,
            )
            for c in configs
        ]
    )
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(df.to_string(index=False))
    for r in df.itertuples():
        print(
            f"{r.config} {r.quantity} [{r.engine}]: PyHessian / ours = {r.speedup:.2f}x "
            f"(median of {r.repeats} paired runs; range {r.speedup_min:.2f}-{r.speedup_max:.2f})"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_hessian.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
