"""Collapse on digits: final projector spectra per objective, RankMe and normalised std by epoch."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis import collapse
from analysis._common import run_and_record
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "collapse_spectra"
DESCRIPTION = (
    "Digits projector embeddings: singular-value spectra (RankMe marked) of EMI, MIO, baselines "
    "and a pure-alignment run that collapses; effective rank and normalised std over epochs"
)
SOURCE = "analysis/collapse.py"


def _load(results_dir: Path, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    results_dir = Path(results_dir)
    load_or_run(collapse, collapse.NAME, results_dir, quick)
    spectra_csv = results_dir / f"{collapse.SPECTRA_NAME}.csv"
    if not spectra_csv.exists():
        run_and_record(collapse.run, quick=quick, out=results_dir)
    return pd.read_csv(results_dir / f"{collapse.NAME}.csv"), pd.read_csv(spectra_csv)


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    per_epoch, spectra = _load(results_dir, quick)
    return save_figure(plot(per_epoch, spectra), NAME, out_dir, source=SOURCE)


def _style(objective: str, order: list[str]) -> dict:
    if objective == "alignment":
        return {"color": "0.2", "ls": "--", "label": "alignment only (collapses)"}
    return {"color": f"C{order.index(objective)}", "ls": "-", "label": objective.upper()}


def plot(per_epoch: pd.DataFrame, spectra: pd.DataFrame) -> plt.Figure:
    """(a) sigma_k / sigma_1 of the final epoch, log scale, RankMe as a dot on each curve;
    (b) RankMe / d by epoch with the dimensional-collapse threshold 0.25; (c) normalised std by
    epoch against the healthy 1/sqrt(d) and the complete-collapse cut 0.1/sqrt(d)."""
    order = list(dict.fromkeys(per_epoch["objective"]))
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4), layout="constrained")
    ax = axes[0]
    for obj, g in spectra.groupby("objective", sort=False):
        g = g.sort_values("index")
        s = g["singular_value"].to_numpy()
        k = g["index"].to_numpy()
        rel = s / s[0]
        st = _style(obj, order)
        ax.semilogy(k[rel > 0], rel[rel > 0], color=st["color"], ls=st["ls"], label=st["label"])
        er = float(g["effective_rank"].iloc[0])
        ax.plot([er], [np.interp(er, k, rel)], "o", color=st["color"], ms=5)
    ax.set_xlabel("index k")
    ax.set_ylabel(r"$\sigma_k / \sigma_1$ (uncentred Z)")
    ax.set_title("final spectra (dot: RankMe)")
    ax.legend(fontsize=8)
    d = int(per_epoch["dim"].iloc[0])
    for obj, g in per_epoch.groupby("objective", sort=False):
        st = _style(obj, order)
        axes[1].plot(
            g["epoch"],
            g["effective_rank_fraction"],
            marker="o",
            ms=3,
            color=st["color"],
            ls=st["ls"],
        )
        axes[2].plot(
            g["epoch"], g["normalized_std"], marker="o", ms=3, color=st["color"], ls=st["ls"]
        )
    axes[1].axhline(0.25, color="C3", lw=0.8, ls=":")
    axes[1].text(
        axes[1].get_xlim()[0],
        0.25,
        " dimensional-collapse cut",
        color="C3",
        va="bottom",
        fontsize=8,
    )
    axes[1].set_ylim(0, None)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"RankMe / d  (d = {d})")
    axes[1].set_title("effective rank")
    axes[2].axhline(1 / np.sqrt(d), color="0.5", lw=0.8, ls=":")
    axes[2].axhline(0.1 / np.sqrt(d), color="C3", lw=0.8, ls=":")
    axes[2].text(
        axes[2].get_xlim()[0],
        1 / np.sqrt(d),
        r" healthy $1/\sqrt{d}$",
        color="0.4",
        va="top",
        fontsize=8,
    )
    axes[2].text(
        axes[2].get_xlim()[0],
        0.1 / np.sqrt(d),
        r" complete-collapse cut",
        color="C3",
        va="bottom",
        fontsize=8,
    )
    axes[2].set_ylim(0, None)
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("std of L2-normalised z")
    axes[2].set_title("normalised std (SimSiam)")
    for ax in axes[1:]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n = int(per_epoch["n_samples"].iloc[0])
    fig.suptitle(f"digits, projector embeddings of {n} val images", fontsize=10)
    return fig
