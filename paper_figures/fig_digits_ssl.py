"""EMI and MIO pre-trained on digits: frozen-probe accuracy against a random encoder, and the
trainer's online monitoring (kNN accuracy, effective rank) epoch by epoch."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import digits_ssl
from analysis._common import run_and_record
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "digits_ssl"
DESCRIPTION = (
    "Digits, the embedded default: linear-probe accuracy (10 labels per class, all labels) and "
    "kNN of EMI and MIO backbones vs their random initialisation; kNN accuracy and projector "
    "effective rank over the training epochs"
)
SOURCE = "analysis/digits_ssl.py"


def _load(results_dir: Path, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    results_dir = Path(results_dir)
    table = load_or_run(digits_ssl, digits_ssl.NAME, results_dir, quick)
    curves_csv = results_dir / f"{digits_ssl.CURVES_NAME}.csv"
    if not curves_csv.exists():
        table, _ = run_and_record(digits_ssl.run, quick=quick, out=results_dir)
    return table, pd.read_csv(curves_csv)


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    table, curves = _load(results_dir, quick)
    return save_figure(plot(table, curves), NAME, out_dir, source=SOURCE)


def plot(table: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """(a) probe / kNN accuracy, random vs trained, per objective (error bar: sd over label
    subsets); (b) online kNN top-1 by epoch, random-init level dashed; (c) projector RankMe / d by
    epoch with the default dimensional-collapse threshold 0.25."""
    objectives = list(dict.fromkeys(table["objective"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), layout="constrained")
    ax = axes[0]
    metrics = [("probe_10_per_class", "probe\n10/class"), ("probe_all_labels", "probe\nall labels"),
               ("knn_all_labels", "kNN\nall labels")]  # fmt: skip
    width = 0.8 / (2 * len(objectives))
    x = np.arange(len(metrics))
    for i, obj in enumerate(objectives):
        for j, encoder in enumerate(("random", "trained")):
            row = table[(table["objective"] == obj) & (table["encoder"] == encoder)].iloc[0]
            vals = [row[m] for m, _ in metrics]
            err = [row["probe_10_per_class_std"], 0, 0]
            offset = (2 * i + j - len(objectives) + 0.5) * width
            ax.bar(x + offset, vals, width, yerr=err, color=f"C{i}", alpha=0.35 if j == 0 else 1,
                   label=f"{obj.upper()} {encoder}")  # fmt: skip
    ax.set_xticks(x, [label for _, label in metrics])
    low = float(table[[m for m, _ in metrics]].min().min())
    ax.set_ylim(max(0.0, low - 8), 104)
    ax.set_ylabel("top-1 on the val split (%)")
    ax.set_title("frozen backbone: random vs trained")
    ax.legend(fontsize=6.5, ncol=4, loc="upper center", handlelength=1.2, columnspacing=0.8)
    for i, obj in enumerate(objectives):
        g = curves[curves["objective"] == obj].sort_values("epoch")
        if "knn_top1" in g:
            ok = g["knn_top1"].notna()
            axes[1].plot(g["epoch"][ok], g["knn_top1"][ok], "o-", ms=3, color=f"C{i}",
                         label=obj.upper())  # fmt: skip
        base = table[(table["objective"] == obj) & (table["encoder"] == "random")]
        axes[1].axhline(float(base["knn_all_labels"].iloc[0]), color=f"C{i}", ls="--", lw=0.8)
        trained = table[(table["objective"] == obj) & (table["encoder"] == "trained")]
        dim = float(trained["projector_dim"].iloc[0])
        if "proj_effective_rank" in g:
            ok = g["proj_effective_rank"].notna()
            axes[2].plot(g["epoch"][ok], g["proj_effective_rank"][ok] / dim, "o-", ms=3,
                         color=f"C{i}", label=f"{obj.upper()} (d = {dim:.0f})")  # fmt: skip
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("online kNN top-1 (%)")
    axes[1].set_title("during training (dashed: random init)")
    axes[1].legend(fontsize=8)
    axes[2].axhline(0.25, color="C3", lw=0.8, ls=":")
    axes[2].text(0.5, 0.26, "dimensional-collapse cut", color="C3", fontsize=7, va="bottom")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("RankMe / d of the projections")
    axes[2].set_title("effective rank (online, val split)")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=8)
    return fig
