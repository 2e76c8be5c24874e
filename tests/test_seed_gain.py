"""analysis.seed_gain: per-seed SSL gain on digits (quick sizes) and its summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import seed_gain
from analysis.digits_ssl import gain_summary


def test_gain_summary_counts_seeds_at_the_margin():
    table = pd.DataFrame({
        "variant": ["a", "a", "a", "b", "b"], "epochs": [30, 30, 30, 30, 30],
        "gain": [6.0, 4.0, 5.0, 5.5, 7.5],
    })  # fmt: skip
    stats = gain_summary(table, ["variant", "epochs"], margin=5.0)
    a, b = stats.loc[("a", 30)], stats.loc[("b", 30)]
    assert a["mean"] == pytest.approx(5.0) and (a["min"], a["max"]) == (4.0, 6.0)
    assert (a["seeds"], a["seeds_at_margin"]) == (3, 2)  # 5.0 counts, 4.0 does not
    assert b["mean"] == pytest.approx(6.5) and (b["seeds"], b["seeds_at_margin"]) == (2, 2)


def test_variants_and_epochs_are_paired_on_the_same_random_init(tmp_path):
    table = seed_gain.run(
        tmp_path, quick=True, seeds=(0,), epochs=(1, 2), variants=("mio", "mio_tau1.0")
    )
    assert list(zip(table["variant"], table["epochs"], strict=True)) == [
        ("mio", 1), ("mio", 2), ("mio_tau1.0", 1), ("mio_tau1.0", 2)
    ]  # fmt: skip
    assert table["probe_random_init"].nunique() == 1  # seed 0: one initial encoder for all
    assert table["probe_trained"].nunique() == 4  # longer training / other tau: other encoder
    assert (table["gain"] == table["probe_trained"] - table["probe_random_init"]).all()
    # the temperature override reached the trainer
    run = tmp_path / "seed_gain_runs" / "mio_tau1.0_e2" / "digits_mio_quick_s0"
    params = yaml.safe_load((run / "config.yaml").read_text())["loss"]["params"]
    assert params["tau_p"] == params["tau_n"] == 1.0
    assert (tmp_path / "seed_gain.csv").exists()
    assert "seeds_at_margin" in seed_gain.summary(table)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mio_tau9"):
        seed_gain.run(None, quick=True, variants=("mio_tau9",))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        seed_gain.run(None, quick=True, epochs=(0,))


def test_figure_shows_one_dot_per_run_and_the_mean():
    from paper_figures import fig_seed_gain

    table = pd.DataFrame({
        "variant": ["emi"] * 3 + ["mio"] * 3, "epochs": [30] * 6, "seed": [0, 1, 2] * 2,
        "gain": [6.0, 4.0, 5.0, 5.5, 7.5, 3.0],
    })  # fmt: skip
    fig = fig_seed_gain.plot(table)
    ax = fig.axes[0]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(np.sort(dots), np.sort(table["gain"]))
    bars = sorted(p.get_height() for p in ax.patches)
    np.testing.assert_allclose(bars, [5.0, 5.333333333])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["emi\n30 ep", "mio\n30 ep"]


def test_quick_figure_from_scratch(tmp_path):
    from paper_figures.__main__ import main

    out, results = tmp_path / "fig", tmp_path / "res"
    assert (
        main(["--only", "seed_gain", "--quick", "--out", str(out), "--results", str(results)]) == 0
    )
    assert (out / "seed_gain.png").stat().st_size > 1000
    table = pd.read_csv(results / "seed_gain.csv")
    assert set(table["seed"]) == set(seed_gain.QUICK_SEEDS)
    assert set(table["epochs"]) == set(seed_gain.QUICK_EPOCHS)


def test_there_is_no_base_seed_option(monkeypatch, capsys):
    """The seeds are a list (--seeds); --seed used to be accepted and ignored (and argparse would
    otherwise take it for an abbreviated --seeds)."""
    calls = []
    monkeypatch.setattr(seed_gain, "run", lambda *a, **k: calls.append(k))
    assert seed_gain.main(["--seed", "3", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds" in err[0] and not calls
    with pytest.raises(SystemExit):
        seed_gain.main(["--help"])
    assert "--seed " not in capsys.readouterr().out
