"""The Sigma-free gap C(beta, p, q) = I_exact - I_second_order for several splits."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from analysis import beta_sweep
from paper_figures._data import load_or_run
from paper_figures._style import beta_axis, save_figure

NAME = "ggd_gap"
DESCRIPTION = (
    "Gap C(beta) = exact MI - second-order MI of GGD pairs (exact vs GGD-marginal formula)"
)
SOURCE = "analysis/beta_sweep.py"


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    df = load_or_run(beta_sweep, beta_sweep.NAME, results_dir, quick)
    return save_figure(plot(df), NAME, out_dir, source=SOURCE)


def plot(df):
    """Figure from a ``beta_sweep`` table."""
    wide = (
        df[df.method != "ksg"]
        .pivot_table(index=["beta", "dim_x", "dim_y", "rho"], columns="method", values="mi")
        .reset_index()
    )
    wide["gap_exact"] = wide["exact"] - wide["second_order"]
    wide["gap_formula"] = wide["ggd_marginals"] - wide["second_order"]
    # The gap does not depend on rho (a property the tests check); plot rho = 0.
    gap = wide[wide.rho == 0.0]
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    splits = sorted({(int(a), int(b)) for a, b in gap[["dim_x", "dim_y"]].itertuples(index=False)})
    for idx, (dim_x, dim_y) in enumerate(splits):
        line = gap[(gap.dim_x == dim_x) & (gap.dim_y == dim_y)].sort_values("beta")
        color = f"C{idx % 10}"
        ax.plot(line.beta, line.gap_exact, color=color, lw=2, label=f"{dim_x}+{dim_y}")
        ax.plot(line.beta, line.gap_formula, color=color, ls="--", lw=1)
        ax_ratio.plot(
            line.beta, line.gap_exact - line.gap_formula, color=color, label=f"{dim_x}+{dim_y}"
        )
    ax.set(
        xlabel=r"shape $\beta$",
        ylabel="C [nats]",
        title="gap over second-order MI:\nexact (solid) vs GGD-marginal formula (dashed)",
    )
    beta_axis(ax)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(title="dims", frameon=False, fontsize=8)
    ax_ratio.set(
        xlabel=r"shape $\beta$",
        ylabel="exact - formula [nats]",
        title="error of the GGD-marginal formula",
    )
    beta_axis(ax_ratio)
    ax_ratio.axhline(0, color="0.6", lw=0.8)
    fig.tight_layout()
    return fig
