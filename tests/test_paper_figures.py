"""The figure registry: discovery, --list, --only, errors; the quick theory figures are written."""

from __future__ import annotations

import pandas as pd

from paper_figures.__main__ import main, registry
from paper_figures._data import load_or_run

EXPECTED = {"ggd_densities", "mi_vs_beta", "ggd_gap", "ksg_bias", "invariance"}


def test_registry_has_the_theory_figures():
    figures = registry()
    assert EXPECTED <= set(figures)
    for module in figures.values():
        assert module.DESCRIPTION and module.SOURCE


def test_list(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


def test_unknown_figure_is_an_error(capsys, tmp_path):
    assert main(["--only", "no_such_figure", "--out", str(tmp_path)]) == 2
    assert "no_such_figure" in capsys.readouterr().err


def test_quick_run_writes_pdf_and_png(tmp_path):
    out, results = tmp_path / "fig", tmp_path / "res"
    assert (
        main(
            [
                "--only",
                "ggd_densities",
                "mi_vs_beta",
                "--quick",
                "--out",
                str(out),
                "--results",
                str(results),
            ]
        )
        == 0
    )
    for name in ("ggd_densities", "mi_vs_beta"):
        for ext in ("pdf", "png"):
            path = out / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 1000
    assert (results / "beta_sweep.csv").exists()


# ------------------------------------------------------------------------------------------------
# load_or_run: a table is reused only when it was made with the same arguments; --force
# ------------------------------------------------------------------------------------------------


class FakeDriver:
    """An analysis driver that writes two tables (``fake`` and ``fake_extra``) and counts its runs."""

    NAME, EXTRA = "fake", "fake_extra"

    def __init__(self):
        self.calls = []

    def run(self, quick, out, seed=0, objectives=("a", "b"), returns="main"):
        from analysis._common import write_table

        self.calls.append(tuple(objectives))
        table = pd.DataFrame({"objective": list(objectives), "value": range(len(objectives))})
        write_table(table, out, self.NAME, {"quick": quick, "seed": seed})
        write_table(table.assign(value=-1), out, self.EXTRA, {"quick": quick, "seed": seed})
        return table if returns == "main" else table.assign(value=-1)


def test_a_table_made_with_other_arguments_is_recomputed(tmp_path, capsys):
    from analysis._common import run_and_record

    driver = FakeDriver()
    run_and_record(driver.run, quick=True, out=tmp_path, objectives=("a", "b", "c", "d"))
    table = load_or_run(driver, driver.NAME, tmp_path, True, objectives=("a", "b"))
    assert list(table["objective"]) == ["a", "b"] and len(driver.calls) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recomputing" in err[0] and "objectives" in err[0]
    # the same arguments (defaults filled in, tuple or list alike): read, not recomputed
    table = load_or_run(driver, driver.NAME, tmp_path, True, objectives=["a", "b"], seed=0)
    assert list(table["objective"]) == ["a", "b"] and len(driver.calls) == 2
    # the other table of the same run is reused too ("returns" does not count)
    extra = load_or_run(driver, driver.EXTRA, tmp_path, True, objectives=("a", "b"), returns="x")
    assert list(extra["value"]) == [-1, -1] and len(driver.calls) == 2
    assert load_or_run(driver, driver.NAME, tmp_path, False, objectives=("a", "b")) is not None
    assert len(driver.calls) == 3  # quick differs
    assert capsys.readouterr().err.count("\n") == 1


def test_a_table_without_a_record_of_its_arguments_is_recomputed(tmp_path):
    driver = FakeDriver()
    driver.run(quick=True, out=tmp_path, objectives=("x",))  # e.g. written by an older version
    table = load_or_run(driver, driver.NAME, tmp_path, True)
    assert list(table["objective"]) == ["a", "b"] and len(driver.calls) == 2


def _fake_figures(driver):
    import types

    def make(out_dir, quick, results_dir):
        load_or_run(driver, driver.NAME, results_dir, quick)
        load_or_run(driver, driver.EXTRA, results_dir, quick)
        return []

    return {
        name: types.SimpleNamespace(NAME=name, DESCRIPTION="d", SOURCE="s", make=make)
        for name in ("fig_one", "fig_two")  # two figures drawn from the same tables
    }


def test_force_recomputes_every_table_once(tmp_path, monkeypatch):
    import paper_figures.__main__ as runner

    driver = FakeDriver()
    monkeypatch.setattr(runner, "registry", lambda: _fake_figures(driver))
    argv = ["--quick", "--out", str(tmp_path / "fig"), "--results", str(tmp_path / "res")]
    assert runner.main(argv) == 0
    assert len(driver.calls) == 1  # from scratch: one run, then both figures read its tables
    assert runner.main(argv) == 0
    assert len(driver.calls) == 1  # nothing changed: reused
    assert runner.main([*argv, "--force"]) == 0
    assert len(driver.calls) == 2  # recomputed once, not once per figure or table
