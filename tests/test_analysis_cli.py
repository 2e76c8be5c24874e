"""The analysis command lines: bad input is one ``error: ...`` line and exit 2, before any compute;
help texts name the module (``python -m ...``) and say what ``--quick`` costs; tables print in
full."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    beta_sweep,
    digits_ssl,
    emi_recipe,
    invariance,
    ksg_bias,
    seed_gain,
    taylor_order,
)

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = {
    "beta_sweep": beta_sweep,
    "digits_ssl": digits_ssl,
    "emi_recipe": emi_recipe,
    "invariance": invariance,
    "ksg_bias": ksg_bias,
    "seed_gain": seed_gain,
    "taylor_order": taylor_order,
}


def _no_compute(*args, **kwargs):
    raise AssertionError("the compute started before the arguments were checked")


def _assert_one_line_error(code, capsys, *words):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err


@pytest.mark.parametrize(
    ("name", "argv", "words"),
    [
        ("taylor_order", ["--checkpoint", "/nonexistent/emb.pt"], ["--checkpoint", "no such"]),
        ("beta_sweep", ["--out", "FILE"], ["--out", "not a folder"]),
        ("ksg_bias", ["--workers", "0"], ["--workers"]),
        ("ksg_bias", ["--workers", "-2"], ["--workers"]),
        ("seed_gain", ["--epochs", "0"], ["--epochs"]),
        ("seed_gain", ["--seeds", "-1"], ["--seeds"]),
        ("invariance", ["--seed", "-1"], ["--seed"]),
        ("digits_ssl", ["--out", "FILE/sub"], ["--out"]),
        ("emi_recipe", ["--out", "FILE"], ["--out"]),
        ("taylor_order", ["--orders", "0", "4"], ["--orders"]),
    ],
)
def test_bad_input_is_one_line_before_any_compute(name, argv, words, tmp_path, monkeypatch, capsys):
    module = DRIVERS[name]
    monkeypatch.setattr(module, "run", _no_compute)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    argv = [a.replace("FILE", str(a_file)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "res")]
    _assert_one_line_error(module.main(argv), capsys, *words)


def test_paper_figures_unusable_out_is_one_line_before_any_figure(tmp_path, monkeypatch, capsys):
    import paper_figures.__main__ as runner

    monkeypatch.setattr(runner, "apply_style", _no_compute)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for flag in ("--out", "--results"):
        argv = ["--only", "ggd_densities", "--out", str(tmp_path / "f"), "--results", str(tmp_path)]
        argv[argv.index(flag) + 1] = str(a_file / "x")
        _assert_one_line_error(runner.main(argv), capsys, flag)


def test_taylor_order_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a torch file")
    monkeypatch.setattr(taylor_order, "geometric_spectrum", _no_compute)
    code = taylor_order.main(["--quick", "--checkpoint", str(bad), "--out", str(tmp_path / "r")])
    _assert_one_line_error(code, capsys, "garbage.pt")


def test_the_real_command_line_exits_2(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.beta_sweep", "--quick", "--out", str(a_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --out {a_file}: exists and is not a folder"
    ]


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_help_names_the_module_and_the_cost_of_quick(name, capsys):
    with pytest.raises(SystemExit) as exc:
        DRIVERS[name].main(["--help"])
    assert exc.value.code == 0
    usage, description, options = capsys.readouterr().out.split("\n\n", 2)
    assert usage.startswith(f"usage: python -m analysis.{name} ")
    description = " ".join(description.split())
    assert description.endswith((".", "?")), description  # the whole first paragraph
    options = " ".join(options.split())
    quick = options[options.index("--quick ") : options.index("--quick ") + 250]
    assert "seconds, not minutes" not in quick
    assert "seconds" in quick or "minutes" in quick.replace("- minutes", "-minutes"), quick
    if name in ("digits_ssl", "seed_gain", "emi_recipe"):  # digits training: minutes
        assert "minutes" in quick.replace("- minutes", "-minutes"), quick
    if name == "digits_ssl":
        assert "recorded in the metadata only" in quick


def test_beta_sweep_prints_the_whole_table(tmp_path, monkeypatch, capsys):
    betas = np.geomspace(0.1, 10, 80)  # more rows and columns than pandas shows by default
    rows = [
        {"beta": b, "dim_x": d, "dim_y": d, "rho": 0.0, "method": m, "mi": 0.1 * d}
        for b in betas
        for d in range(1, 12)
        for m in ("exact", "ggd_marginals")
    ]

    def fake_run(quick, out, seed=0, k=5):
        return pd.DataFrame(rows)

    monkeypatch.setattr(beta_sweep, "run", fake_run)
    assert not beta_sweep.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "..." not in out and "rows x" not in out
    assert sum(line[:4].strip().replace(".", "").isdigit() for line in out.splitlines()) == 80
