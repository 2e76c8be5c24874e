"""Invariance table as a figure: how far each homeomorphism moves KSG and Gaussian-MI estimates."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import invariance
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "invariance"
DESCRIPTION = (
    "Shift of MI estimates under per-side homeomorphisms (true MI unchanged), in units of the "
    "estimator's seed spread; KSG vs Gaussian MI, per distribution"
)
SOURCE = "analysis/invariance.py"
CAP = 5.0
ESTIMATOR_TITLES = {"ksg": "KSG (k=5)", "gaussian": "Gaussian (second-order) MI"}


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    summary = load_or_run(
        invariance, invariance.SUMMARY_NAME, results_dir, quick, returns="summary"
    )
    return save_figure(plot(summary), NAME, out_dir, source=SOURCE)


def _largest_n(summary: pd.DataFrame) -> pd.DataFrame:
    n_max = summary.groupby("case")["n"].transform("max")
    return summary[summary["n"] == n_max]


def plot(summary: pd.DataFrame) -> plt.Figure:
    """Heat maps (one per estimator; largest n of each case): colour = shift / seed spread (signed,
    capped at +-5), text = shift in nats ("0": unchanged up to rounding); a box marks cells with
    |shift| > seed spread. Column labels give n and the true MI I in nats."""
    df = _largest_n(summary)
    df = df[df["transform"] != "none"]
    cases = list(dict.fromkeys(df["case"]))
    order = list(invariance.map_names())
    maps = sorted(
        set(df["transform"]), key=lambda m: (order.index(m) if m in order else len(order), m)
    )
    ests = [e for e in ESTIMATOR_TITLES if e in set(df["estimator"])]
    sizes = df.groupby("case")["n"].first()
    truths = df.groupby("case")["truth"].first()
    fig, axes = plt.subplots(
        len(ests),
        1,
        figsize=(1.2 * len(cases) + 3.2, (0.36 * len(maps) + 0.9) * len(ests) + 0.6),
        squeeze=False,
        layout="constrained",
        sharex=True,
    )
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("0.92")
    image = None
    for ax, est in zip(axes[:, 0], ests, strict=True):
        sub = df[df["estimator"] == est].set_index(["transform", "case"])
        signed = np.full((len(maps), len(cases)), np.nan)
        for i, m in enumerate(maps):
            for j, c in enumerate(cases):
                if (m, c) in sub.index:
                    row = sub.loc[(m, c)]
                    signed[i, j] = np.sign(row["shift"]) * row["shift_over_spread"]
        image = ax.imshow(np.clip(signed, -CAP, CAP), cmap=cmap, vmin=-CAP, vmax=CAP, aspect="auto")
        for i, m in enumerate(maps):
            for j, c in enumerate(cases):
                if (m, c) not in sub.index:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.5")
                    continue
                row = sub.loc[(m, c)]
                strong = abs(signed[i, j]) > 3.0
                ax.text(
                    j,
                    i,
                    "0" if abs(row["shift"]) < 1e-12 else f"{row['shift']:+.3f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if strong else "black",
                )
                if not row["invariant_within_spread"]:
                    ax.add_patch(
                        plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.4, ec="black")
                    )
        ax.set_xticks(
            range(len(cases)), [f"{c}\nn={sizes[c]}, I={truths[c]:.2f}" for c in cases], fontsize=8
        )
        ax.set_yticks(range(len(maps)), maps, fontsize=8)
        ax.set_title(ESTIMATOR_TITLES[est], fontsize=10)
        ax.grid(False)
    cbar = fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.02)
    cbar.set_label(f"shift / seed spread (capped at ±{CAP:g})", fontsize=8)
    fig.suptitle(
        "Shift of the estimate after a per-side homeomorphism (nats; the true MI is unchanged)\n"
        "colour: shift / seed spread; boxed: |shift| > seed spread",
        fontsize=9,
    )
    return fig


def scatter_maps(x: np.ndarray, y: np.ndarray, maps: dict, max_points: int = 2000) -> plt.Figure:
    """One panel per map: the first coordinate of F(x) against the first of G(y) (F = G = map), for
    eyeballing what each homeomorphism does to a sample. ``maps``: name -> Homeomorphism; maps
    that do not support the sample's dimension are drawn on the first two coordinates of x instead
    (x_1 vs x_2 after the map), so a 2-D-only map such as Spiral still gets a panel."""
    x2 = x.reshape(len(x), -1)[:max_points]
    y2 = y.reshape(len(y), -1)[:max_points]
    panels = {"none": None, **maps}
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False, layout="constrained"
    )
    for ax, (name, m) in zip(axes.flat, panels.items(), strict=False):
        if m is None:
            a, b, labels = x2[:, 0], y2[:, 0], ("x_1", "y_1")
        elif m.supports(min(x2.shape[1], y2.shape[1])):
            a, b, labels = m(x2)[:, 0], m(y2)[:, 0], ("F(x)_1", "G(y)_1")
        elif m.supports(x2.shape[1]):
            fx = m(x2)
            a, b, labels = fx[:, 0], fx[:, 1], ("F(x)_1", "F(x)_2")
        else:
            ax.set_axis_off()
            continue
        ax.scatter(a, b, s=2, alpha=0.4, color="C0", rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(labels[0], fontsize=8)
        ax.set_ylabel(labels[1], fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    return fig
