"""Small helpers shared by the analysis drivers: the command line (parser, argument checks, one-line
errors), results folder, CSV writing with metadata, progress bars."""

from __future__ import annotations

import argparse
import contextvars
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mitools.checkpoint import folder_write_problem
from mitools.progress import progress

__all__ = [
    "EXIT_BAD_INPUT",
    "BadInput",
    "common_problem",
    "base_parser",
    "check_out_dir",
    "describe",
    "fail",
    "print_table",
    "progress",
    "recorded_arguments",
    "run_and_record",
    "run_arguments",
    "write_table",
]

#: Exit status of a command line given bad input (as ``mitools.diagnose`` and
#: ``analysis.hessian_compare``); the message is one ``error: ...`` line on stderr.
EXIT_BAD_INPUT = 2
#: Parameters of a driver's ``run`` that do not change what it writes (where, how it is returned,
#: how many threads): left out of the recorded arguments.
NOT_RECORDED = ("out", "echo", "returns", "threads", "workers")
ARGUMENTS_KEY = "arguments"


def describe(doc: str) -> str:
    """The first paragraph of a module docstring as one line (an argparse description)."""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def base_parser(
    description: str,
    *,
    prog: str | None = None,
    quick_help: str = "small sizes for smoke runs and CI",
    seed: bool = True,
) -> argparse.ArgumentParser:
    """``--out``, ``--quick`` and (``seed=True``) ``--seed``. ``description``: a docstring (its first
    paragraph is used) or one line; ``prog``: the module, shown as ``python -m <prog>``;
    ``quick_help``: what ``--quick`` does for this program (and how long it takes)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}" if prog else None, description=describe(description)
    )
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if seed:
        parser.add_argument(
            "--seed", type=int, default=0, help="base seed (runs use seed, seed+1, ...)"
        )
    return parser


class BadInput(ValueError):
    """A driver's input is unusable (a missing or malformed file, say); raised before any compute,
    and reported by the command line as one ``error: ...`` line (:func:`fail`)."""


def fail(message: str | BaseException) -> int:
    """Print ``error: message`` (one line) on stderr and return :data:`EXIT_BAD_INPUT`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def check_out_dir(path: str | Path, flag: str = "--out") -> str | None:
    """Make sure the output folder exists (it is created) and is writable, before any compute;
    None when it is, else the problem in one line
    (:func:`mitools.checkpoint.folder_write_problem`)."""
    problem = folder_write_problem(path)
    return None if problem is None else f"{flag} {path}: {problem}"


def common_problem(args: argparse.Namespace) -> str | None:
    """The first problem with the :func:`base_parser` arguments (``--out`` not a usable folder,
    a negative ``--seed``), or None; call it before any compute."""
    if getattr(args, "seed", 0) < 0:
        return f"--seed must be >= 0, got {args.seed}"
    return check_out_dir(args.out)


def print_table(df: pd.DataFrame, **kwargs) -> None:
    """Print every row and column (``DataFrame.to_string``: no '...' elision when piped)."""
    print(df.to_string(**kwargs))


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, meta: dict | None = None) -> Path:
    """Write ``name.csv`` and, if given, ``name.json`` metadata, each atomically
    (:func:`mitools.checkpoint.atomic_write_text`). Inside :func:`run_and_record` for this folder,
    the metadata also holds the run's arguments and the table is listed as written."""
    from mitools.checkpoint import atomic_write_text

    out = Path(out_dir)
    path = atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    recording = _RECORDING.get()
    if recording is not None and recording.folder == out.resolve():
        meta = {**(meta or {}), ARGUMENTS_KEY: recording.arguments}
        recording.written.append(path)
    if meta is not None:
        atomic_write_text(out / f"{name}.json", json.dumps(meta, indent=2, default=str))
    return path


@dataclass
class _Recording:
    folder: Path
    arguments: dict
    written: list[Path]


# The run_and_record call in progress (None outside one); write_table reads it.
_RECORDING: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar(
    "_RECORDING", default=None
)


def run_arguments(run: Callable, **kwargs) -> dict:
    """The arguments ``run(**kwargs)`` is called with, defaults filled in, as JSON values (tuples
    become lists, paths strings), less :data:`NOT_RECORDED`: what the tables it writes depend on."""
    bound = inspect.signature(run).bind(**kwargs)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k not in NOT_RECORDED}
    return json.loads(json.dumps(args, default=str))


def recorded_arguments(out_dir: str | Path, name: str) -> dict | None:
    """The arguments stored with ``out_dir/name.json`` by :func:`run_and_record`; None when the
    table, its metadata or the record is missing."""
    csv, meta = Path(out_dir) / f"{name}.csv", Path(out_dir) / f"{name}.json"
    if not (csv.exists() and meta.exists()):
        return None
    try:
        return json.loads(meta.read_text()).get(ARGUMENTS_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def run_and_record(run: Callable, *, out: str | Path, **kwargs) -> tuple[object, list[Path]]:
    """``run(out=out, **kwargs)``, storing :func:`run_arguments` in the metadata of every table
    it writes to ``out`` (through :func:`write_table`), so that
    :func:`paper_figures._data.load_or_run` reuses a table only when it was made with the same
    arguments. Returns what ``run`` returns and the tables (CSV paths) it wrote."""
    out = Path(out)
    recording = _Recording(out.resolve(), run_arguments(run, out=out, **kwargs), [])
    token = _RECORDING.set(recording)
    try:
        result = run(out=out, **kwargs)
    finally:
        _RECORDING.reset(token)
    return result, recording.written
