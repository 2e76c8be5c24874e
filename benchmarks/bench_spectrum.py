"""Time of the collapse statistics for RankMe-sized embeddings (25,600 x 2048) vs a full SVD.

Timed in the same run (minimum over repeats, float32 embeddings in memory as a model returns them):

- ``svdvals_float64``: the plain way, ``torch.linalg.svdvals`` of the float64 matrix (what
  :func:`mitools.spectrum.effective_rank` does), the reference of the ratios and of RankMe;
- ``streaming_spectrum[P]``: :class:`mitools.spectrum.CovarianceAccumulator` with precision P
  over batches of 8192 rows, then both spectra (uncentred singular values, centred covariance
  eigenvalues; one tridiagonalisation serves both);
- ``collapse_report[P]``: the whole report (spectra, RankMe both conventions, participation
  ratio, numerical rank, alpha-ReQ, normalised std, uniformity on 2048 rows).

P = ``auto`` (the default: float32 Gram for these float32 embeddings) and ``float64``.
``rankme_rel_diff``: |RankMe - RankMe(SVD)| / RankMe(SVD); ``numerical_rank``: should equal the
SVD's. ``python -m benchmarks.bench_spectrum [--quick] [--threads N] [--csv PATH]``
(quick: 6400 x 512); the load average before and after is printed (the timings are wall time).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from mitools.spectrum import (
    CovarianceAccumulator,
    collapse_report,
    effective_rank_from_singular_values,
)


def time_call(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def make_embeddings(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """float32 embeddings with a power-law spectrum (alpha = 1) and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float32).pow(-0.5)
    return torch.randn(n, d, generator=g) * scale + 0.1


def streaming_spectrum(z: torch.Tensor, precision: str = "auto", batch: int = 8192):
    acc = CovarianceAccumulator(z.shape[1], precision=precision)  # type: ignore[arg-type]
    for i in range(0, z.shape[0], batch):
        acc.update(z[i : i + batch])
    return acc.spectrum(center=False), acc.spectrum(center=True)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run(n: int, d: int, repeats: int) -> pd.DataFrame:
    z = make_embeddings(n, d)
    t_svd, s_ref = time_call(lambda: torch.linalg.svdvals(z.double()).numpy(), 1)
    rankme_svd = effective_rank_from_singular_values(s_ref)
    rows = [
        {
            "method": "svdvals_float64",
            "seconds": t_svd,
            "rankme": rankme_svd,
            "numerical_rank": int(np.sum(s_ref > 1e-4 * s_ref[0])),
        }
    ]
    for precision in ("auto", "float64"):
        t_stream, (unc, _) = time_call(lambda p=precision: streaming_spectrum(z, p), repeats)
        s = unc.singular_values
        rows.append(
            {
                "method": f"streaming_spectrum[{precision}]",
                "seconds": t_stream,
                "rankme": effective_rank_from_singular_values(s),
                "numerical_rank": int(np.sum(s > 1e-4 * s[0])),
            }
        )
        t_report, report = time_call(lambda p=precision: collapse_report(z, precision=p), repeats)
        rows.append(
            {
                "method": f"collapse_report[{precision}]",
                "seconds": t_report,
                "rankme": report.effective_rank,
                "numerical_rank": report.numerical_rank,
            }
        )
    df = pd.DataFrame(rows)
    df["n"], df["d"], df["threads"] = n, d, torch.get_num_threads()
    df["ratio_to_svd"] = df["seconds"] / t_svd
    df["rankme_rel_diff"] = (df["rankme"] - rankme_svd).abs() / rankme_svd
    return df


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n, d = (6400, 512) if args.quick else (25_600, 2048)
    load_before = _load()
    df = run(n, d, args.repeats)
    print(
        f"n={n} d={d} threads={torch.get_num_threads()} "
        f"load average before={load_before:.1f} after={_load():.1f}"
    )
    with pd.option_context("display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
