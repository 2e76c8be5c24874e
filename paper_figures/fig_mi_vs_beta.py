"""MI of GGD pairs against beta: exact, second-order, GGD-marginal formula and KSG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from analysis import beta_sweep
from paper_figures._data import load_or_run
from paper_figures._style import beta_axis, save_figure

NAME = "mi_vs_beta"
DESCRIPTION = (
    "MI vs beta for GGD pairs: exact (quadrature), second-order, GGD-marginal formula, KSG"
)
SOURCE = "analysis/beta_sweep.py"
STYLES = {
    "exact": {"color": "C0", "lw": 2.2, "label": "exact (quadrature)"},
    "second_order": {"color": "C1", "ls": "--", "label": "second-order (Thm 1)"},
    "ggd_marginals": {"color": "C2", "ls": ":", "lw": 2, "label": "GGD-marginal formula"},
}


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    df = load_or_run(beta_sweep, beta_sweep.NAME, results_dir, quick)
    return save_figure(plot(df), NAME, out_dir, source=SOURCE)


def plot(df):
    """Figure from a ``beta_sweep`` table."""
    panels = sorted({(int(a), int(b)) for a, b in df[["dim_x", "dim_y"]].itertuples(index=False)})
    panels = [p for p in panels if p in ((1, 1), (2, 2), (4, 4), (8, 8))] or panels[:4]
    rhos = sorted(r for r in df.rho.unique() if r in (0.0, 0.5, 0.9))
    fig, axes = plt.subplots(
        len(rhos),
        len(panels),
        figsize=(3.1 * len(panels), 2.5 * len(rhos)),
        squeeze=False,
        sharex=True,
    )
    for i, rho in enumerate(rhos):
        for j, (dim_x, dim_y) in enumerate(panels):
            ax = axes[i, j]
            sub = df[(df.rho == rho) & (df.dim_x == dim_x) & (df.dim_y == dim_y)]
            for method, style in STYLES.items():
                line = sub[sub.method == method].sort_values("beta")
                ax.plot(line.beta, line.mi, **style)
            ksg = sub[sub.method == "ksg"].sort_values("beta")
            if len(ksg):
                ax.errorbar(
                    ksg.beta,
                    ksg.mi,
                    yerr=ksg.mi_std,
                    fmt="o",
                    ms=3,
                    color="C3",
                    capsize=2,
                    label="KSG k=5 after asinh (mean ± sd)",
                )
            beta_axis(ax)
            ax.axvline(1.0, color="0.7", lw=0.8)
            ax.set_title(rf"{dim_x}+{dim_y} dims, $\rho={rho:g}$", fontsize=9)
            if i == len(rhos) - 1:
                ax.set_xlabel(r"shape $\beta$")
            if j == 0:
                ax.set_ylabel("I(X;Y) [nats]")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles, labels, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.02)
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig
