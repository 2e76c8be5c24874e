"""Bias of the KSG MI estimator at high MI and high dimension, on Gaussians with known MI.

Data: X, Y in R^d with d independent pairs (x_j, y_j), each standard bivariate normal with
correlation rho; the total MI is I = -d/2 log(1 - rho^2), so rho = sqrt(1 - exp(-2 I / d)) hits
a target I exactly. Estimators: KSG variants 1 and 2 (k = 5) and, for contrast, the Gaussian
(log-det) MI, which is the correct model here. Output: tidy table ``ksg_bias.csv`` with columns
dims (d per variable), true_mi, n, k, variant, seed, estimate, bias (= estimate - true_mi),
estimator ("ksg" or "gaussian"; k and variant are empty for "gaussian").

    python -m analysis.ksg_bias [--quick] [--out results] [--seed 0]
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._common import (
    base_parser,
    common_problem,
    fail,
    print_table,
    progress,
    run_and_record,
    write_table,
)
from mitools.mi.estimators import gaussian_mi, ksg_mi

NAME = "ksg_bias"
FULL = {
    "dims": (1, 2, 5, 10, 20),
    "mis": (0.1, 0.5, 1.0, 2.0, 3.0, 5.0),
    "ns": (1000, 5000),
    "seeds": 3,
}
QUICK = {"dims": (1, 5), "mis": (0.5, 2.0), "ns": (500,), "seeds": 1}
K = 5


def gaussian_pairs(n: int, dims: int, mi: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """n samples of (X, Y), each (n, dims), with exactly ``mi`` nats of MI (see module doc)."""
    rho = np.sqrt(1.0 - np.exp(-2.0 * mi / dims))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dims))
    y = rho * x + np.sqrt(1.0 - rho**2) * rng.standard_normal((n, dims))
    return x, y


def run(quick: bool, out: Path, seed: int = 0, workers: int = -1) -> pd.DataFrame:
    grid = QUICK if quick else FULL
    cells = list(itertools.product(grid["dims"], grid["mis"], grid["ns"], range(grid["seeds"])))
    rows = []
    for dims, mi, n, rep in progress(cells, desc="ksg bias"):
        s = seed + rep
        # one seed stream per cell, independent of the grid's order
        x, y = gaussian_pairs(n, dims, mi, seed=[s, dims, n, round(mi * 1000)])
        common = {"dims": dims, "true_mi": mi, "n": n, "seed": s}
        for variant in (1, 2):
            est = ksg_mi(x, y, k=K, variant=variant, workers=workers)
            rows.append({**common, "k": K, "variant": variant, "estimate": est, "estimator": "ksg"})
        est = gaussian_mi(x, y)
        rows.append(
            {**common, "k": None, "variant": None, "estimate": est, "estimator": "gaussian"}
        )
    df = pd.DataFrame(rows)
    df["bias"] = df["estimate"] - df["true_mi"]
    df = df[["dims", "true_mi", "n", "k", "variant", "seed", "estimate", "bias", "estimator"]]
    meta = {"quick": quick, "seed": seed, "grid": grid, "k": K}
    write_table(df, out, NAME, meta)
    return df


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Mean bias (nats) per dims x true MI, for each estimator / variant and n."""
    label = np.where(
        df["estimator"] == "ksg", "ksg" + df["variant"].fillna(0).astype(int).astype(str), "gauss"
    )
    return (
        df.assign(est=label)
        .pivot_table(index=["n", "est", "dims"], columns="true_mi", values="bias", aggfunc="mean")
        .round(3)
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        __doc__,
        prog="analysis.ksg_bias",
        quick_help="a small grid (d = 1, 5; MI 0.5, 2; n = 500; one seed): a few seconds",
    )
    parser.add_argument(
        "--workers", type=int, default=-1, help="threads for the KD-tree (-1: all; else >= 1)"
    )
    args = parser.parse_args(argv)
    problem = common_problem(args)
    if not problem and (args.workers == 0 or args.workers < -1):
        problem = f"--workers must be -1 (all cores) or >= 1, got {args.workers}"
    if problem:
        return fail(problem)
    df, _ = run_and_record(
        run, quick=args.quick, out=Path(args.out), seed=args.seed, workers=args.workers
    )
    print("mean bias (estimate - true MI, nats); columns: true MI")
    print_table(pivot(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
