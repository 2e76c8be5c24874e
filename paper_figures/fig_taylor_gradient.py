"""Cosine between the truncated-Taylor gradient and the exact gradient of log det and of the
Gaussian MI, versus the order K, per scale rule and condition number: with respect to the
covariance (Frobenius) and with respect to embeddings Z with Z'Z/N = C (tr(G1 C G2))."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import taylor_order
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "taylor_gradient"
DESCRIPTION = "Cosine(Taylor gradient, exact gradient) of log det and MI vs order, per scale rule"
SOURCE = "analysis/taylor_order.py"

RULE_ORDER = list(taylor_order.RULES)
MARKERS = dict(zip(RULE_ORDER, "osv^D", strict=True))


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    df = load_or_run(taylor_order, taylor_order.NAME, results_dir, quick)
    return save_figure(plot(df), NAME, out_dir, source=SOURCE)


def plot(df: pd.DataFrame) -> plt.Figure:
    """Draw the figure from the ``taylor_order.csv`` table."""
    order = taylor_order.largest_geometric_order_rows(df)
    d = int(order["d"].max())
    kappas = sorted(order["kappa"].unique())
    palette = dict(zip(RULE_ORDER, sns.color_palette("colorblind", len(RULE_ORDER)), strict=True))
    panels = [
        ("logdet", "grad_cos", "log det, w.r.t. C"),
        ("logdet", "grad_cos_embedding", "log det, w.r.t. Z"),
        ("mi", "grad_cos", "MI, w.r.t. joint C"),
        ("mi", "grad_cos_embedding", "MI, w.r.t. Z"),
    ]
    fig, axes = plt.subplots(
        len(panels),
        len(kappas),
        figsize=(2.6 * len(kappas), 2.3 * len(panels) + 0.6),
        squeeze=False,
        sharey=True,
    )
    for row, (quantity, metric, label) in enumerate(panels):
        for col, kappa in enumerate(kappas):
            ax = axes[row, col]
            sub = order[(order["quantity"] == quantity) & (order["kappa"] == kappa)]
            for rule in RULE_ORDER:
                r = sub[sub["scale"] == rule].sort_values("order")
                if r.empty:
                    continue
                style = "-" if bool(r["in_region"].all()) else ":"
                ax.plot(
                    r["order"],
                    r[metric],
                    style,
                    marker=MARKERS[rule],
                    ms=3,
                    color=palette[rule],
                    label=rule,
                    alpha=0.85,
                )
            ax.axhline(0.0, color="0.5", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            title = "kappa = 1" if kappa == 1 else f"kappa = 1e{int(round(np.log10(kappa)))}"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("order K" if row == len(panels) - 1 else "")
            if col == 0:
                ax.set_ylabel(f"cosine\n{label}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels),
        frameon=False,
        bbox_to_anchor=(0.5, 1.05),
        title=f"scale rule (d = {d}; dotted: outside 0 < lambda/s < 2)",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.955))
    return fig
