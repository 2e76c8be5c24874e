"""Small helpers shared by the analysis drivers: results folder, CSV writing, progress bars."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from mitools.progress import progress

__all__ = ["base_parser", "write_table", "progress"]


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--quick", action="store_true", help="CI sizes: seconds, not minutes")
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed (runs use seed, seed+1, ...)"
    )
    return parser


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, meta: dict | None = None) -> Path:
    """Write ``name.csv`` atomically (temp file + rename) and, if given, ``name.json`` metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    if meta is not None:
        meta_path = out / f"{name}.json"
        tmp_meta = meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp_meta, meta_path)
    return path
