"""Progress bars for long work, one switch for all of them: ``MITOOLS_NO_PROGRESS=1`` silences
every bar (tests, notebooks run in CI, batch jobs whose logs should stay readable)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["NON_TTY_INTERVAL_S", "progress", "progress_enabled"]

NON_TTY_INTERVAL_S = 30.0


def progress_enabled() -> bool:
    return os.environ.get("MITOOLS_NO_PROGRESS") != "1"


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: int | None = None,
    disable: bool | None = None,
    **kwargs: Any,
):
    """A tqdm bar on stderr that does not linger (``leave=False``); off when disabled by the
    environment switch or ``disable=True``. When the stream is not a terminal (a batch job's log
    file), the bar redraws at most every ``NON_TTY_INTERVAL_S`` seconds instead of ten times a
    second, so logs stay readable."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not progress_enabled()
    kwargs.setdefault("leave", False)
    kwargs.setdefault("file", sys.stderr)
    isatty = getattr(kwargs["file"], "isatty", None)
    in_notebook = "notebook" in tqdm.__module__  # widget bars: no log file to flood
    if not in_notebook and not (callable(isatty) and isatty()):
        kwargs.setdefault("mininterval", NON_TTY_INTERVAL_S)
    return tqdm(iterable, desc=desc, total=total, disable=disable, **kwargs)
