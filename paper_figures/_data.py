"""Figures read the tidy CSVs that the analysis drivers write; when a CSV is missing (or was made at
another size) the figure runs the driver first, so ``python -m paper_figures`` works from scratch."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pandas as pd


def load_or_run(
    driver: ModuleType, name: str, results_dir: Path, quick: bool, **kwargs
) -> pd.DataFrame:
    """Return ``results_dir/name.csv`` made by ``driver.run``; (re)run it when absent or when its
    metadata says it was made with a different ``quick`` flag."""
    csv = Path(results_dir) / f"{name}.csv"
    meta = Path(results_dir) / f"{name}.json"
    if csv.exists() and meta.exists():
        if json.loads(meta.read_text()).get("quick") == quick:
            return pd.read_csv(csv)
    return driver.run(quick=quick, out=Path(results_dir), **kwargs)
