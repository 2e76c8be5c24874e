"""Error of the truncated-Taylor log-det and of the Gaussian MI built from it, versus the order K,
per scale rule and condition number; and where the series breaks down (lambda_max/s -> 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import taylor_order
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "taylor_order"
DESCRIPTION = (
    "Taylor log-det / MI relative error vs order per scale rule (facets: condition number), "
    "and error vs lambda_max/s with the EMA-lag study"
)
SOURCE = "analysis/taylor_order.py"

RULE_ORDER = list(taylor_order.RULES)
MARKERS = dict(zip(RULE_ORDER, "osv^D", strict=True))


def _kappa_label(kappa: float) -> str:
    return "kappa = 1" if kappa == 1 else f"kappa = 1e{int(round(np.log10(kappa)))}"


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    df = load_or_run(taylor_order, taylor_order.NAME, results_dir, quick)
    return save_figure(plot(df), NAME, out_dir, source=SOURCE)


def plot(df: pd.DataFrame) -> plt.Figure:
    """Draw the figure from the ``taylor_order.csv`` table."""
    order = taylor_order.largest_geometric_order_rows(df)
    d = int(order["d"].max())
    kappas = sorted(order["kappa"].unique())
    bd = df[df["study"] == "breakdown"]
    bd_kappas = sorted(bd["kappa"].unique())
    run = df[df["study"] == "running"]
    ncols = max(len(kappas), len(bd_kappas) + 1)
    palette = dict(zip(RULE_ORDER, sns.color_palette("colorblind", len(RULE_ORDER)), strict=True))

    fig, axes = plt.subplots(3, ncols, figsize=(2.6 * ncols, 7.6), squeeze=False)
    rows = [
        ("logdet", "abs_err_per_dim", "|error| of log det / d (nats)"),
        ("mi", "rel_err", "rel. error of Gaussian MI"),
    ]
    for row, (quantity, metric, label) in enumerate(rows):
        for col in range(ncols):
            ax = axes[row, col]
            if col >= len(kappas):
                ax.axis("off")
                continue
            kappa = kappas[col]
            sub = order[(order["quantity"] == quantity) & (order["kappa"] == kappa)]
            for rule in RULE_ORDER:
                r = sub[sub["scale"] == rule].sort_values("order")
                if r.empty:
                    continue
                y = r[metric].clip(lower=1e-17)
                style = "-" if bool(r["in_region"].all()) else ":"
                ax.plot(
                    r["order"],
                    y,
                    style,
                    marker=MARKERS[rule],
                    ms=3,
                    color=palette[rule],
                    label=rule,
                    alpha=0.85,
                )
            ax.set_yscale("log")
            ax.axhline(1e-3, color="0.5", lw=0.7, ls="--")
            ax.set_title(_kappa_label(kappa), fontsize=9)
            ax.set_xlabel("order K" if row == 1 else "")
            if col == 0:
                ax.set_ylabel(label)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels),
        frameon=False,
        bbox_to_anchor=(0.5, 1.03),
        title=f"scale rule (d = {d}; dotted: outside 0 < lambda/s < 2)",
    )

    # breakdown: error vs lambda_max / s
    k_palette = sns.color_palette("rocket_r", bd["order"].nunique())
    for col, kappa in enumerate(bd_kappas):
        ax = axes[2, col]
        sub = bd[bd["kappa"] == kappa]
        for color, (K, r) in zip(k_palette, sub.groupby("order"), strict=True):
            r = r.sort_values("max_ratio")
            ax.plot(
                r["max_ratio"], r["rel_err"].clip(lower=1e-17), color=color, label=f"K = {int(K)}"
            )
        ax.axvline(2.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(top=1e6)
        ax.set_xlabel("lambda_max / s")
        ax.set_title(f"breakdown, {_kappa_label(kappa)}, d = {int(sub['d'].iloc[0])}", fontsize=9)
        if col == 0:
            ax.set_ylabel("rel. error of log det")
            ax.legend(fontsize=7, loc="upper left")
    # EMA lag of RunningScale
    ax = axes[2, len(bd_kappas)]
    for marker, (m, r) in zip("os^", run.groupby("momentum"), strict=False):
        r = r.sort_values("growth")
        ax.plot(r["growth"], r["max_ratio"], marker=marker, ms=3, label=f"momentum {m:g}")
        ok = r["steady_state_ratio"].notna()
        ax.plot(r.loc[ok, "growth"], r.loc[ok, "steady_state_ratio"], color="0.4", lw=0.7, ls=":")
    ax.axhline(2.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("spectrum growth per step")
    ax.set_ylabel("lambda_max / s (EMA scale)")
    ax.set_title("RunningScale lag (dotted: theory)", fontsize=9)
    ax.legend(fontsize=7)
    for col in range(len(bd_kappas) + 1, ncols):
        axes[2, col].axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig
