"""Hessian spectra, mitools.hessian vs PyHessian 0.1, same model, batch and iteration counts.

    python -m benchmarks.bench_hessian [--quick] [--threads 1] [--configs ...] [--out results/bench]

Small CNNs (``small_cnn`` widths 4-8 with batch 64, 1.2k params; widths 8-16-32 with batch 128,
7.5k params; projector 32-16 without BN) on one frozen batch of augmented digits view pairs,
SimCLR loss, float32, CPU. Timed (median of ``--repeats``, each
including operator / PyHessian construction, i.e. the first forward + backward):

- top-1 eigenvalue with 20 products: our Lanczos (max_iter=20; +1 product for the true
  residual) vs PyHessian's power iteration (maxIter=20, tol=-inf);
- trace with 64 probes: our Hutchinson through ``matmat`` (one vmap'd jvp-of-grad pass over all
  64 probes) vs PyHessian's 64 sequential double-backward products;
- density with 64 Lanczos steps, one run: ours vs PyHessian's (with the torch.eig shim).

Prints ratios = PyHessian time / our time (> 1: ours faster) and writes bench_hessian.csv.
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

CONFIGS = {"cnn_4_8_b64": ([4, 8], 64), "cnn_8_16_32_b128": ([8, 16, 32], 128)}


def setup(batch: int, widths: list[int] = (8, 16, 32), seed: int = 0):
    torch.manual_seed(seed)
    spec = EncoderSpec(
        arch="small_cnn",
        in_channels=1,
        widths=list(widths),
        projector_dims=[32, 16],
        projector_bn=False,
        projector_last_bn=False,
    )
    model = SSLModel(spec).eval()
    ds = build_dataset("digits", None, "train")
    x1, x2 = freeze_views(_images(ds), batch, BatchAugment(get_preset("digits")), seed=seed)
    loss = build_loss("simclr", check_finite=False).eval()

    def loss_fn(m, b):
        return loss(m(b[0])[1], m(b[1])[1])

    return model, loss_fn, (x1, x2)


def _images(ds) -> torch.Tensor:
    xs = [torch.as_tensor(ds[i][0]) for i in range(len(ds))]
    return torch.stack(xs).float()


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run(
    config: str, repeats: int = 3, iters: int = 20, probes: int = 64, steps: int = 64
) -> pd.DataFrame:
    widths, batch = CONFIGS[config]
    model, fn, b = setup(batch, widths)
    n = sum(p.numel() for p in model.parameters())
    cases = {
        "top1": (
            lambda: top_eigenvalues(
                HessianOperator(model, fn, b), k=1, tol=1e-30, max_iter=iters
            ).eigenvalues[0],
            lambda: pyhessian_top_eigenvalues(
                model, fn, b, k=1, max_iter=iters, tol=-math.inf
            ).eigenvalues[0],
        ),
        "trace": (
            lambda: trace(HessianOperator(model, fn, b), "hutchinson", probes, seed=0).estimate,
            lambda: pyhessian_trace(model, fn, b, n_probes=probes, seed=0).estimate,
        ),
        "density": (
            lambda: spectral_density(HessianOperator(model, fn, b), runs=1, steps=steps).moment(2),
            lambda: pyhessian_density(model, fn, b, steps=steps, runs=1).moment(2),
        ),
    }
    rows = []
    for name, (ours, theirs) in cases.items():
        ours()  # warm-up (torch.func tracing caches, allocator)
        t_o, v_o = _time(ours, repeats)
        t_p, v_p = _time(theirs, repeats)
        rows.append(
            {
                "config": config,
                "quantity": name,
                "n_params": n,
                "batch": batch,
                "ours_s": t_o,
                "pyhessian_s": t_p,
                "speedup": t_p / t_o,
                "ours_value": float(v_o),
                "pyhessian_value": float(v_p),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    configs = args.configs[:1] if args.quick else args.configs
    df = pd.concat([run(c, repeats=1 if args.quick else args.repeats) for c in configs])
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(df.to_string(index=False))
    for r in df.itertuples():
        print(f"{r.config} {r.quantity}: PyHessian / ours = {r.speedup:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_hessian.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
