"""Forward + backward time of logdet_exact versus logdet_taylor (K = 2, 4, 8).

Two settings, each timed in the same run and reported as a ratio to the exact float64 log-det:

- "matrix": one d x d covariance C (requires grad) -> log det -> backward;
- "pipeline": a (B, d) embedding batch Z (requires grad) -> centred covariance + ridge -> log det
  -> backward, i.e. the part of the EMI loss that the log-det choice affects.

Methods: exact float64 Cholesky (the library default), exact in the input dtype (float32), and the
Taylor series in float32 with scale="power" (20 power-iteration steps; the default on_violation
check reuses that estimate) and scale="trace" (O(d^2) scale, Gershgorin/power check).
Uses CUDA when available. ``python -m benchmarks.bench_logdet [--quick] [--csv PATH]``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import pandas as pd
import torch

from mitools.logdet import TaylorConvergenceWarning, logdet_exact, logdet_taylor
from mitools.timing import time_calls

RIDGE = 1e-3


def time_call(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Minimum wall time (s) of ``fn`` over ``repeats`` runs after ``warmup`` runs (the minimum is
    the least noisy statistic on a shared machine)."""
    return min(time_calls(fn, device, repeats, warmup))


def methods() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "exact_f64": lambda C: logdet_exact(C),
        "exact_f32": lambda C: logdet_exact(C, float64=False),
    }
    for scale in ("power", "trace"):
        for K in (2, 4, 8):
            out[f"taylor{K}_{scale}"] = lambda C, K=K, scale=scale: logdet_taylor(C, K, scale=scale)
    return out


def embeddings(B: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) / d**0.5
    Z = torch.randn(B, d, generator=gen) @ mix
    return Z.to(device)


def covariance(Z: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    Zc = Z - Z.mean(0)
    C = Zc.T @ Zc / (Z.shape[0] - 1)
    return C + ridge * torch.eye(Z.shape[1], dtype=Z.dtype, device=Z.device)


def run(quick: bool, seed: int = 0, device: torch.device | None = None) -> pd.DataFrame:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = (64, 128) if quick else (128, 512, 2048)
    batches = (256,) if quick else (256, 1024)
    repeats = 2 if quick else 5
    rows = []
    fns = methods()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaylorConvergenceWarning)
        for d in dims:
            C0 = covariance(embeddings(4 * d, d, device, seed)).detach()
            for name, f in fns.items():

                def matrix_step(f=f, C0=C0):
                    C = C0.clone().requires_grad_(True)
                    f(C).backward()

                rows.append(
                    {
                        "setting": "matrix",
                        "d": d,
                        "B": 0,
                        "method": name,
                        "seconds": time_call(matrix_step, device, repeats),
                    }
                )
            for B in batches:
                Z0 = embeddings(B, d, device, seed + 1)
                for name, f in fns.items():

                    def pipeline_step(f=f, Z0=Z0):
                        Z = Z0.clone().requires_grad_(True)
                        f(covariance(Z)).backward()

                    rows.append(
                        {
                            "setting": "pipeline",
                            "d": d,
                            "B": B,
                            "method": name,
                            "seconds": time_call(pipeline_step, device, repeats),
                        }
                    )
    df = pd.DataFrame(rows)
    base = df[df["method"] == "exact_f64"].set_index(["setting", "d", "B"])["seconds"]
    df["ratio_vs_exact_f64"] = [r.seconds / base[(r.setting, r.d, r.B)] for r in df.itertuples()]
    df["device"] = str(device)
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="also write the table to this CSV")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else None
    df = run(args.quick, args.seed, device)
    print(f"device: {df['device'].iloc[0]}, torch threads: {torch.get_num_threads()}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        for setting, sub in df.groupby("setting", sort=False):
            table = sub.pivot_table(index=["d", "B"], columns="method", values="ratio_vs_exact_f64")
            ms = sub[sub["method"] == "exact_f64"].set_index(["d", "B"])["seconds"] * 1e3
            table.insert(0, "exact_f64_ms", ms)
            print(f"\n[{setting}] forward+backward time / exact_f64 time")
            print(table.round(3).to_string())
    if args.csv:
        df.to_csv(args.csv, index=False)
    return df


if __name__ == "__main__":
    main()
