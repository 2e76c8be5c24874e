"""analysis.emi_recipe: the EMI recipe ablation on digits (quick sizes)."""

from __future__ import annotations

import pytest

from analysis import emi_recipe


def test_variants_share_the_random_init_and_differ_only_by_the_loss(tmp_path):
    table = emi_recipe.run(
        tmp_path, quick=True, seeds=(0,), variants=("exact_batch", "taylor4_ema")
    )
    assert list(table["variant"]) == ["exact_batch", "taylor4_ema"]
    # same seed -> same initial encoder whatever the loss (the comparison is paired)
    assert table["probe_random_init"].nunique() == 1
    # the losses differ, so the trained encoders do
    assert table["probe_trained"].nunique() == 2
    assert (tmp_path / "emi_recipe.csv").exists()
    assert "taylor4_ema" in emi_recipe.summary(table)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="taylor3"):
        emi_recipe.run(None, quick=True, variants=("taylor3",))


@pytest.mark.parametrize(
    ("argv", "seeds"),
    [([], (0, 1, 2)), (["--seed", "5"], (5, 6, 7)), (["--quick", "--seed", "5"], (5,)),
     (["--seed", "5", "--seeds", "1", "9"], (1, 9))],
)  # fmt: skip
def test_command_line_seeds(argv, seeds, tmp_path, monkeypatch):
    # --seed was ignored without --quick (the full run always trained seeds 0 1 2)
    got = {}
    monkeypatch.setattr(emi_recipe, "run_and_record", lambda run, **kw: (got.update(kw), None))
    monkeypatch.setattr(emi_recipe, "summary", lambda table: "")
    assert emi_recipe.main([*argv, "--out", str(tmp_path)]) == 0
    assert got["seeds"] == seeds
