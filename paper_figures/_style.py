"""One shared look for every figure, and one way to save them (PDF + PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"


def apply_style() -> None:
    """Seaborn 'whitegrid' paper context with the colour-blind palette."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight"})


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path, source: str) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` to ``out_dir``.

    ``source`` names the analysis that produced the data (e.g. ``analysis/beta_sweep.py``); it is
    stamped in the lower-left corner so a figure separated from its script still says where it
    came from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.text(0.005, 0.003, f"data: {source}", fontsize=6, color="0.45", ha="left", va="bottom")
    paths = []
    for ext in ("pdf", "png"):
        path = out / f"{name}.{ext}"
        fig.savefig(path)
        paths.append(path)
    plt.close(fig)
    return paths


def beta_axis(ax, ticks=(0.25, 0.5, 1, 2, 4, 8)) -> None:
    """Log-scaled shape axis with plain labels (0.25, 0.5, 1, ...) and no minor-tick clutter."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
