"""Hessian spectra of SSL objectives on frozen digits view pairs: density overlays per objective
(every evaluated epoch), and top eigenvalue / trace against epoch next to the training loss and
the online linear-probe (and kNN) accuracy of the same epoch."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from analysis import hessian_compare
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "hessian_spectra"
DESCRIPTION = (
    "Hessian eigenvalue densities (SLQ) per SSL objective on one frozen batch of digits view "
    "pairs; top eigenvalue, trace, training loss and online probe accuracy against epoch"
)
SOURCE = "analysis/hessian_compare.py"


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    summary = load_or_run(hessian_compare, hessian_compare.NAME, results_dir, quick)
    density = load_or_run(
        hessian_compare, hessian_compare.DENSITY_NAME, results_dir, quick, returns="density"
    )
    return save_figure(plot(summary, density), NAME, out_dir, source=SOURCE)


def plot(summary: pd.DataFrame, density: pd.DataFrame) -> plt.Figure:
    """Left: one panel per objective, the smoothed SLQ density (log y, floor 1e-6) at each
    evaluated epoch overlaid (linear x: the objectives' curvature scales differ by orders of
    magnitude). Right: top eigenvalue, trace (+-2 SE), the loss and the accuracy against epoch; the
    loss panel shows the loss on the frozen views (solid) and the mean training loss (dashed),
    min-max scaled per objective over both, since the objectives' units differ; the accuracy panel
    shows the trainer's online linear-probe top-1 (solid) and kNN top-1 (dotted) of the same epoch
    (``probe_top1`` / ``knn_top1``; epochs the run did not evaluate are NaN and left out). A
    summary without those columns (written before they existed) leaves the panel empty."""
    objectives = list(dict.fromkeys(summary["objective"]))
    colors = dict(zip(objectives, plt.get_cmap("tab10").colors, strict=False))
    epochs = sorted(set(summary["epoch"]))
    shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(epochs)))
    fig = plt.figure(figsize=(11, 7.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.45, 1])
    ncol = 2
    nrow = int(np.ceil(len(objectives) / ncol))
    axes = left.subplots(nrow, ncol, squeeze=False)
    for ax, obj in zip(axes.flat, objectives, strict=False):
        d = density[density["objective"] == obj]
        for ep, shade in zip(epochs, shades, strict=True):
            sub = d[d["epoch"] == ep]
            if len(sub):
                ax.plot(sub["x"], np.maximum(sub["density"], 1e-9), color=shade, lw=1.1,
                        label=f"epoch {ep}")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(1e-6, None)
        ax.set_title(obj, fontsize=10)
        ax.set_xlabel("eigenvalue", fontsize=8)
    for ax in axes.flat[len(objectives) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("density (smoothed SLQ)")
    axes.flat[0].legend(fontsize=7)
    left.suptitle("Spectral density per objective, epochs overlaid", fontsize=10)
    ax_top, ax_tr, ax_loss, ax_acc = right.subplots(4, 1, sharex=True)
    for obj in objectives:
        s = summary[summary["objective"] == obj].sort_values("epoch")
        c = colors[obj]
        ax_top.plot(s["epoch"], s["top1"], "o-", color=c, ms=3, label=obj)
        ax_tr.errorbar(s["epoch"], s["trace"], yerr=2 * s["trace_se"], fmt="o-", ms=3, color=c,
                       capsize=2)  # fmt: skip
        both = pd.concat([s["loss_at_views"], s["train_loss"]]).dropna()
        lo, span = both.min(), both.max() - both.min()
        span = span if span > 0 else 1.0
        ax_loss.plot(s["epoch"], (s["loss_at_views"] - lo) / span, "o-", color=c, ms=3)
        ax_loss.plot(s["epoch"], (s["train_loss"] - lo) / span, "--", color=c, lw=1)
        for col, style in (("probe_top1", "o-"), ("knn_top1", ":")):
            if col in s:
                acc = s[["epoch", col]].dropna()
                ax_acc.plot(acc["epoch"], acc[col], style, color=c, ms=3, lw=1.1)
    ax_top.set_yscale("log")
    ax_top.set_ylabel("top eigenvalue")
    ax_top.legend(fontsize=7, ncol=2)
    ax_tr.set_yscale("symlog", linthresh=1.0)
    ax_tr.yaxis.set_major_locator(mticker.SymmetricalLogLocator(base=100, linthresh=1.0))
    ax_tr.set_ylabel("trace (Hutch++, ±2 SE)")
    ax_loss.set_ylabel("loss (min-max)\nsolid: frozen views\ndashed: training")
    ax_acc.set_ylabel("accuracy (%)\nsolid: linear probe\ndotted: kNN")
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    n = int(summary["n_params"].iloc[0])
    right.suptitle(f"Curvature along training ({n} parameters, BN eval)", fontsize=10)
    return fig
