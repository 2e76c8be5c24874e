"""Univariate generalized Gaussian densities at unit variance for several shapes beta."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mitools.mi import GGD
from paper_figures._style import save_figure

NAME = "ggd_densities"
DESCRIPTION = (
    "Univariate GGD densities (unit variance) for beta from 0.25 to 8, linear and log scale"
)
SOURCE = "mitools/mi/ggd.py (closed-form density)"
BETAS = (0.25, 0.5, 1.0, 2.0, 8.0)


def make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]:
    return save_figure(plot(), NAME, out_dir, source=SOURCE)


def plot(betas=BETAS):
    """Densities of GGD(cov=1, beta) on a grid, linear and log scale."""
    x = np.linspace(-5, 5, 801)
    fig, (ax_lin, ax_log) = plt.subplots(1, 2, figsize=(9, 3.4))
    for beta in betas:
        density = np.exp(GGD(cov=1.0, beta=beta).logpdf(x[:, None]))
        label = rf"$\beta={beta:g}$" + (" (Gaussian)" if beta == 1 else "")
        ax_lin.plot(x, density, label=label)
        ax_log.plot(x, density)
    ax_lin.set(xlabel="x", ylabel="density", title="unit variance, linear scale", xlim=(-3.5, 3.5))
    ax_log.set(xlabel="x", ylabel="density", yscale="log", ylim=(1e-6, 3), title="log scale: tails")
    ax_lin.legend(frameon=False)
    fig.suptitle(r"Generalized Gaussian: $\beta<1$ heavy-tailed, $\beta>1$ light-tailed")
    fig.tight_layout()
    return fig
