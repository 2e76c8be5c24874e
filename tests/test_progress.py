"""mitools.progress: one switch for every bar, and quiet redraws in log files."""

from __future__ import annotations

import io

from mitools.progress import NON_TTY_INTERVAL_S, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_files_get_slow_redraws_terminals_the_default(monkeypatch):
    monkeypatch.delenv("MITOOLS_NO_PROGRESS", raising=False)
    log = progress(total=3, file=io.StringIO())
    term = progress(total=3, file=_Terminal())
    assert log.mininterval == NON_TTY_INTERVAL_S
    assert term.mininterval < 1.0
    log.close()
    term.close()


def test_environment_switch_disables_every_bar(monkeypatch):
    monkeypatch.setenv("MITOOLS_NO_PROGRESS", "1")
    out = io.StringIO()
    for _ in progress(range(5), file=out):
        pass
    assert out.getvalue() == ""
