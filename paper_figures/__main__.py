"""Regenerate every figure: ``python -m paper_figures [--list] [--only NAME ...] [--quick] [--force]``.

A figure's data (the analysis CSV in ``--results``) is reused when its metadata records the same
arguments as the figure asks for, and recomputed otherwise (``paper_figures/_data.py``);
``--force`` recomputes every table once.

Each figure is a module ``paper_figures/fig_*.py`` defining

- ``NAME``: short identifier used by ``--only``;
- ``DESCRIPTION``: one line saying what the figure shows;
- ``SOURCE``: the analysis driver that produced its data;
- ``make(out_dir: Path, quick: bool, results_dir: Path) -> list[Path]``: computes (or reads) the
  data and writes the figure files, returning their paths.

Modules are discovered automatically, so adding a figure means adding one file.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # the runner writes files; it never needs a display

import argparse
import contextlib
import importlib
import pkgutil
import sys
import time
from pathlib import Path

import paper_figures
from analysis._common import check_out_dir, fail
from paper_figures._data import forcing
from paper_figures._style import apply_style


def registry() -> dict[str, object]:
    figures = {}
    for info in sorted(pkgutil.iter_modules(paper_figures.__path__), key=lambda m: m.name):
        if not info.name.startswith("fig_"):
            continue
        module = importlib.import_module(f"paper_figures.{info.name}")
        for attr in ("NAME", "DESCRIPTION", "SOURCE", "make"):
            if not hasattr(module, attr):
                raise RuntimeError(f"paper_figures/{info.name}.py lacks {attr}")
        if module.NAME in figures:
            raise RuntimeError(f"two figure modules share the name {module.NAME!r}")
        figures[module.NAME] = module
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="make only these figures")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (CI, smoke runs); from scratch about 10 CPU-minutes, mostly the digits "
        "training of digits_ssl and seed_gain",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute every analysis table, even one made with the same arguments",
    )
    parser.add_argument("--out", default="figures", help="output folder (default: figures/)")
    parser.add_argument(
        "--results", default="results", help="folder for the analysis CSVs (default: results/)"
    )
    args = parser.parse_args(argv)

    figures = registry()
    if args.list:
        width = max(len(n) for n in figures)
        for name, module in figures.items():
            print(f"{name:<{width}}  {module.DESCRIPTION}  [data: {module.SOURCE}]")
        return 0
    selected = args.only or list(figures)
    unknown = [n for n in selected if n not in figures]
    if unknown:
        return fail(f"unknown figure(s) {unknown}; known: {sorted(figures)}")
    for flag, folder in (("--out", args.out), ("--results", args.results)):
        problem = check_out_dir(folder, flag)
        if problem:
            return fail(problem)
    apply_style()
    out_dir, results_dir = Path(args.out), Path(args.results)
    with forcing() if args.force else contextlib.nullcontext():
        for name in selected:
            start = time.perf_counter()
            paths = figures[name].make(out_dir=out_dir, quick=args.quick, results_dir=results_dir)
            shown = ", ".join(str(p) for p in paths)
            print(f"[{name}] {time.perf_counter() - start:.1f}s -> {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
