"""Invariance of MI estimators under per-side homeomorphisms (EMI Theorem 1): KSG vs Gaussian MI.

For each case (a GGD split; beta = 1 is the Gaussian), each map of
:func:`mitools.mi.homeomorphisms.default_homeomorphisms` (applied to X and to Y; Spiral only where
both sides have dimension >= 2), each estimator (KSG k=5, second-order Gaussian MI) and each seed,
the same sample is estimated before and after the map (:func:`mitools.mi.invariance.check_invariance`).
The true MI never moves, so every shift is estimator error.

Cases: covariance ``[[I, R], [R', I]]`` with rho on the diagonal of R (see
:func:`analysis.beta_sweep.correlated_cov`): rho = sqrt(1 - e^-1) for 1+1 (0.5 nats when Gaussian),
rho = 0.7 otherwise. 5+5 cases show where KSG's invariance breaks down at these sample sizes.

Writes ``invariance.csv`` (one row per case, n, transform, estimator, seed) and
``invariance_summary.csv`` (:func:`mitools.mi.invariance.summarise_invariance` per case and n).

    python -m analysis.invariance [--quick] [--out results] [--seed 0]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
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

NAME = "invariance"
SUMMARY_NAME = "invariance_summary"
RHO_HALF_NAT = float(np.sqrt(1.0 - np.exp(-1.0)))


@dataclass(frozen=True)
class Case:
    """A GGD with covariance ``[[I, R], [R', I]]``, R = rho on its diagonal, split dim_x + dim_y."""

    beta: float
    dim_x: int
    dim_y: int
    rho: float

    @property
    def name(self) -> str:
        law = "gauss" if self.beta == 1.0 else f"ggd_b{self.beta:g}"
        return f"{law}_{self.dim_x}+{self.dim_y}"

    def ggd(self):
        from analysis.beta_sweep import correlated_cov
        from mitools.mi.ggd import GGD

        return GGD(cov=correlated_cov(self.dim_x, self.dim_y, self.rho), beta=self.beta)


def settings(quick: bool) -> dict:
    if quick:
        return {
            "cases": [Case(1.0, 1, 1, RHO_HALF_NAT), Case(0.5, 2, 2, 0.7)],
            "sizes": [500],
            "n_seeds": 3,
        }
    return {
        "cases": [
            Case(1.0, 1, 1, RHO_HALF_NAT),
            Case(1.0, 2, 2, 0.7),
            Case(0.5, 1, 1, RHO_HALF_NAT),
            Case(0.5, 2, 2, 0.7),
            Case(2.0, 2, 2, 0.7),
            Case(1.0, 5, 5, 0.7),
            Case(0.5, 5, 5, 0.7),
        ],
        "sizes": [1000, 4000],
        "n_seeds": 10,
    }


def map_names() -> list[str]:
    """Names of the maps in the sweep, in display order."""
    from mitools.mi.homeomorphisms import default_homeomorphisms

    return list(default_homeomorphisms())


def estimators(k: int = 5) -> dict:
    from mitools.mi.estimators import gaussian_mi, ksg_mi

    return {"ksg": partial(ksg_mi, k=k), "gaussian": gaussian_mi}


def run(quick: bool, out: Path, seed: int = 0, k: int = 5, returns: str = "raw") -> pd.DataFrame:
    """Run the sweep, write both tables, return the raw table (``returns="raw"``) or the summary
    (``returns="summary"``, what the figure reads)."""
    from mitools.mi.homeomorphisms import default_homeomorphisms
    from mitools.mi.invariance import check_invariance, summarise_invariance

    if returns not in ("raw", "summary"):
        raise ValueError(f"returns must be 'raw' or 'summary', got {returns!r}")
    cfg = settings(quick)
    seeds = list(range(seed, seed + cfg["n_seeds"]))
    maps = default_homeomorphisms(seed=seed)
    ests = estimators(k)
    tables = []
    grid = [(case, n) for case in cfg["cases"] for n in cfg["sizes"]]
    for case, n in progress(grid, desc="invariance"):
        usable = {name: m for name, m in maps.items() if m.supports(min(case.dim_x, case.dim_y))}
        df = check_invariance((case.ggd(), case.dim_x), usable, ests, n, seeds)
        df.insert(0, "case", case.name)
        df.insert(1, "beta", case.beta)
        df.insert(2, "rho", case.rho)
        tables.append(df)
    raw = pd.concat(tables, ignore_index=True)
    summary = summarise_invariance(raw, by=["case", "beta", "dim_x", "dim_y", "n"])
    meta = {
        "quick": quick,
        "seed": seed,
        "k": k,
        "n_seeds": cfg["n_seeds"],
        "sizes": cfg["sizes"],
        "cases": [c.name for c in cfg["cases"]],
        "maps": list(maps),
    }
    write_table(raw, out, NAME, meta=meta)
    write_table(summary, out, SUMMARY_NAME, meta=meta)
    return raw if returns == "raw" else summary


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        __doc__,
        prog="analysis.invariance",
        quick_help="two cases, n = 500, 3 seeds: a few seconds",
    )
    args = parser.parse_args(argv)
    problem = common_problem(args)
    if problem:
        return fail(problem)
    summary, _ = run_and_record(
        run, quick=args.quick, out=Path(args.out), seed=args.seed, returns="summary"
    )
    cols = [
        "case",
        "n",
        "transform",
        "estimator",
        "mean",
        "truth",
        "seed_spread",
        "shift",
        "shift_over_spread",
        "paired_z",
        "invariant_within_spread",
    ]
    with pd.option_context("display.precision", 4):
        print_table(summary[summary["transform"] != "none"][cols], index=False)
    print(f"wrote {Path(args.out) / (NAME + '.csv')} and {SUMMARY_NAME}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
