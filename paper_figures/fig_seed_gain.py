"""How much SSL pre-training helps on digits, seed by seed: the 10-labels-per-class probe gain of
EMI and MIO over the run's own random initialisation, at two training lengths."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import seed_gain
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "seed_gain"
DESCRIPTION = (
    "Digits: probe gain (10 labels per class) of EMI and MIO over their random initialisation "
    "for each seed and training length, against the issue's +5-point check"
)
SOURCE = "analysis/seed_gain.py"


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    table = load_or_run(seed_gain, seed_gain.NAME, results_dir, quick)
    return save_figure(plot(table), NAME, out_dir, source=SOURCE)


def plot(table: pd.DataFrame, margin: float = seed_gain.MARGIN) -> plt.Figure:
    """One column per (variant, epochs): a dot per seed (labelled with the seed), the mean as a
    bar; the dashed line is the +``margin``-point check."""
    groups = list(dict.fromkeys(zip(table["variant"], table["epochs"], strict=True)))
    variants = list(dict.fromkeys(table["variant"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 1.5), 3.5), layout="constrained")
    for x, (variant, epochs) in enumerate(groups):
        g = table[(table["variant"] == variant) & (table["epochs"] == epochs)]
        color = f"C{variants.index(variant)}"
        ax.bar(x, g["gain"].mean(), 0.6, color=color, alpha=0.3)
        jitter = np.linspace(-0.15, 0.15, len(g)) if len(g) > 1 else np.zeros(1)
        ax.scatter(x + jitter, g["gain"], s=14, color=color, zorder=3)
        for dx, (seed, gain) in zip(jitter, zip(g["seed"], g["gain"], strict=True), strict=True):
            ax.annotate(str(seed), (x + dx, gain), xytext=(3, 0), textcoords="offset points",
                        fontsize=6, va="center")  # fmt: skip
    ax.axhline(margin, color="C3", ls="--", lw=0.8)
    ax.text(len(groups) - 0.5, margin, f"+{margin:g}", color="C3", fontsize=7, va="bottom",
            ha="right")  # fmt: skip
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xticks(range(len(groups)), [f"{v}\n{e} ep" for v, e in groups], fontsize=8)
    ax.set_ylabel("probe gain over random init (points)")
    ax.set_title("SSL gain per seed (dots, labelled by seed; bar: mean)")
    return fig
