"""Figures read the tidy CSVs that the analysis drivers write; when a CSV is missing, or was made
with other arguments (its ``.json`` metadata records them, :func:`analysis._common.run_and_record`),
the figure runs the driver first, so ``python -m paper_figures`` works from scratch and never draws
the results of a differently-parameterised run."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd

from analysis._common import recorded_arguments, run_and_record, run_arguments

# Tables recomputed by this process while :func:`forcing` is active (None: not forcing).
_FORCED: set[Path] | None = None


@contextlib.contextmanager
def forcing() -> Iterator[None]:
    """Within the block, :func:`load_or_run` recomputes every table once (``--force``); a table
    another figure already recomputed in the block is reused when its arguments match."""
    global _FORCED
    previous, _FORCED = _FORCED, set()
    try:
        yield
    finally:
        _FORCED = previous


def load_or_run(
    driver: ModuleType, name: str, results_dir: Path, quick: bool, **kwargs
) -> pd.DataFrame:
    """Return ``results_dir/name.csv`` made by ``driver.run(quick=quick, **kwargs)``: read it when
    its metadata records the same arguments (defaults filled in; ``returns``, ``threads`` and the
    like do not count), else (re)run the driver, saying why on stderr when a table was there."""
    results_dir = Path(results_dir)
    csv = results_dir / f"{name}.csv"
    wanted = run_arguments(driver.run, quick=quick, out=results_dir, **kwargs)
    stored = recorded_arguments(results_dir, name)
    forced = _FORCED is not None and csv.resolve() not in _FORCED
    if stored == wanted and not forced:
        return pd.read_csv(csv)
    if csv.exists():
        if forced:
            why = "--force"
        elif stored is None:
            why = "no record of the arguments it was made with"
        else:
            diff = sorted(k for k in {*stored, *wanted} if stored.get(k) != wanted.get(k))
            why = "made with other arguments: " + ", ".join(
                f"{k}={stored.get(k)!r} (wanted {wanted.get(k)!r})" for k in diff
            )
        print(f"recomputing {csv} ({why})", file=sys.stderr)
    table, written = run_and_record(driver.run, quick=quick, out=results_dir, **kwargs)
    if _FORCED is not None:
        _FORCED.update(path.resolve() for path in written)
    return table
