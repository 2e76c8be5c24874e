"""The figure registry: discovery, --list, --only, errors; the quick theory figures are written."""

from __future__ import annotations

from paper_figures.__main__ import main, registry

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
