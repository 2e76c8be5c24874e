"""Which part of EMI's GPU recipe costs linear-probe accuracy on digits.

The CIFAR / STL-10 / ImageNet-100 EMI configs (``trainers/configs/methods/emi.yaml``) use a
Taylor log-det of order 4 with running (EMA) scales and an EMA covariance; the digits config uses
the exact log-det of the batch covariance. Both are this toolkit's choices (the paper leaves them
unknown). This driver trains the digits EMI config with each part of the GPU recipe switched on
alone and together, so the cost of each part is measured instead of guessed:

=================  ==========================================================================
variant            ``loss.params`` (the rest of ``digits_emi.yaml`` unchanged)
=================  ==========================================================================
exact_batch        exact log-det, batch covariance (the shipped digits config)
exact_ema          exact log-det, EMA covariance (momentum 0.9)
taylor4_batch      Taylor order 4, running scales (warm-started), batch covariance, clamp
taylor4_ema        the GPU recipe: Taylor order 4, running scales, EMA covariance, clamp
taylor8_ema        as taylor4_ema with order 8
=================  ==========================================================================

Every variant has ridge 1e-4. Runs go through :func:`analysis.digits_runs.ensure_run` (one folder
per variant under ``<out>/emi_recipe_runs``, reused when complete) and are evaluated with the
10-labels-per-class probe of :func:`analysis.digits_ssl.probe_few_labels` (mean over its label
subsets), trained vs the run's own random initialisation. Writes ``emi_recipe.csv`` (one row per
variant and seed) and prints the mean gain per variant.

    python -m analysis.emi_recipe [--quick] [--out results] [--seeds 0 1 2] [--variants ...]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._common import (
    base_parser,
    common_problem,
    fail,
    progress,
    run_and_record,
    write_table,
)

NAME = "emi_recipe"
_RIDGE = "ridge: 1.0e-4"
_TAYLOR = "scale: running, running_warm_iters: 3, on_violation: clamp"
_EMA = "covariance: ema, ema_momentum: 0.9"
VARIANTS: dict[str, str] = {
    "exact_batch": f"{{form: joint, logdet: exact, covariance: batch, {_RIDGE}}}",
    "exact_ema": f"{{form: joint, logdet: exact, {_EMA}, {_RIDGE}}}",
    "taylor4_batch": f"{{form: joint, logdet: taylor, order: 4, {_TAYLOR}, covariance: batch, "
    f"{_RIDGE}}}",
    "taylor4_ema": f"{{form: joint, logdet: taylor, order: 4, {_TAYLOR}, {_EMA}, {_RIDGE}}}",
    "taylor8_ema": f"{{form: joint, logdet: taylor, order: 8, {_TAYLOR}, {_EMA}, {_RIDGE}}}",
}


def run(
    out: Path,
    *,
    quick: bool = False,
    seeds: tuple[int, ...] = (0, 1, 2),
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> pd.DataFrame:
    """Train (or reuse) every variant x seed and return the probe table."""
    from analysis.digits_ssl import probe_gain_row

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    rows = []
    jobs = [(v, s) for v in variants for s in seeds]
    for variant, seed in progress(jobs, desc="emi recipe"):
        row = probe_gain_row(
            "emi", Path(out) / "emi_recipe_runs" / variant, quick=quick, seed=seed,
            overrides=(f"loss.params={VARIANTS[variant]}",),
        )  # fmt: skip
        rows.append({"variant": variant, **row, "loss_params": VARIANTS[variant]})
    table = pd.DataFrame(rows)
    write_table(table, out, NAME, {"quick": quick, "seeds": list(seeds), "variants": VARIANTS})
    return table


def summary(table: pd.DataFrame) -> str:
    from analysis.digits_ssl import gain_summary_text

    return gain_summary_text(table, ["variant"])


def seeds_for(seed: int, quick: bool) -> tuple[int, ...]:
    """The training seeds when ``--seeds`` is not given: ``seed`` alone in quick mode, else three
    consecutive seeds from it (base_parser's ``--seed`` convention)."""
    return (seed,) if quick else (seed, seed + 1, seed + 2)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        __doc__,
        prog="analysis.emi_recipe",
        quick_help="one seed (--seed) of each variant on the narrow quick CNN, 3 epochs, each "
        "probed: a few CPU-minutes",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds (default: --seed, --seed+1, --seed+2; quick: --seed)"
                        )  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    problem = common_problem(args)
    if not problem and args.seeds and min(args.seeds) < 0:
        problem = f"--seeds must be >= 0, got {args.seeds}"
    if problem:
        return fail(problem)
    seeds = tuple(args.seeds) if args.seeds else seeds_for(args.seed, args.quick)
    table, _ = run_and_record(
        run, out=Path(args.out), quick=args.quick, seeds=seeds, variants=tuple(args.variants)
    )
    print(summary(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
