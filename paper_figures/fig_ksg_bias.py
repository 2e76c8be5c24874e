"""KSG estimate vs true MI on Gaussians, one line per dimension: the low bias at high MI / dim."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from analysis import ksg_bias
from paper_figures._data import load_or_run
from paper_figures._style import save_figure

NAME = "ksg_bias"
DESCRIPTION = "KSG (k=5, variants 1/2) and Gaussian MI vs true MI for d+d Gaussians, per d and n"
SOURCE = "analysis/ksg_bias.py"


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    df = load_or_run(ksg_bias, ksg_bias.NAME, results_dir, quick)
    ns = sorted(df["n"].unique())
    dims = sorted(df["dims"].unique())
    palette = dict(zip(dims, sns.color_palette("viridis", len(dims)), strict=True))
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 4.0), squeeze=False, sharey=True)
    top = df["true_mi"].max()
    for ax, n in zip(axes[0], ns, strict=True):
        sub = df[df["n"] == n]
        ax.plot([0, top], [0, top], color="0.2", ls="--", lw=1, label="truth")
        for d in dims:
            for variant, style in ((1, "-o"), (2, ":s")):
                cur = sub[
                    (sub["dims"] == d) & (sub["estimator"] == "ksg") & (sub["variant"] == variant)
                ]
                m = cur.groupby("true_mi")["estimate"].agg(["mean", "std"]).reset_index()
                ax.errorbar(
                    m["true_mi"],
                    m["mean"],
                    yerr=m["std"].fillna(0),
                    fmt=style,
                    ms=3.5,
                    lw=1.3,
                    color=palette[d],
                    label=f"d={d} (ksg{variant})" if variant == 1 else None,
                )
        gauss = sub[sub["estimator"] == "gaussian"].groupby("true_mi")["estimate"].mean()
        ax.plot(
            gauss.index, gauss.values, "x", color="crimson", ms=6, label="Gaussian MI (mean over d)"
        )
        ax.set_title(f"n = {n}")
        ax.set_xlabel("true MI (nats)")
        ax.set_xlim(0, top * 1.03)
        ax.set_ylim(0, top * 1.08)
    axes[0, 0].set_ylabel("estimated MI (nats), mean ± sd over seeds")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.4", ls=":", marker="s", ms=3.5))
    labels.append("dotted: KSG variant 2")
    axes[0, -1].legend(handles, labels, fontsize=7, loc="upper left", frameon=True)
    fig.suptitle("KSG (k = 5) on d+d Gaussians: bias grows with MI and dimension", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, NAME, out_dir, source=SOURCE)
