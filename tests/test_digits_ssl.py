"""analysis.digits_ssl: the random-init baseline is the run's own initial encoder, and the
end-to-end story (train, evaluate, diagnose) writes what the figure and README read."""

from __future__ import annotations

import json

import pandas as pd
import torch

from analysis import digits_runs, digits_ssl

TINY = (
    "model.widths=[8, 16, 16]",
    "model.projector_dims=[16, 8]",
    "data.batch_size=64",
    "train.max_steps_per_epoch=2",
)


def test_random_init_backbone_is_the_runs_initial_encoder(tmp_path):
    # lr = 0 and no weight decay: training leaves the parameters at their initial values, so the
    # rebuilt "random" encoder must equal the trained one parameter for parameter.
    frozen = ("optim.lr=0.0", "optim.weight_decay=0.0")
    run = digits_runs.ensure_run("emi", tmp_path, quick=True, epochs=1, overrides=TINY + frozen)
    from trainers.linear_eval import load_backbone

    trained, _ = load_backbone(run / "last.pt")
    random = digits_ssl.random_init_backbone(run / "last.pt")
    params = dict(random.named_parameters())
    assert params.keys() == dict(trained.named_parameters()).keys()
    for name, p in trained.named_parameters():
        assert torch.equal(p, params[name]), name
    # ... and the global RNG of the caller is not consumed by rebuilding it.
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    digits_ssl.random_init_backbone(run / "last.pt")
    assert torch.equal(torch.rand(2), expected)


def test_run_writes_table_curves_and_diagnose_reports(tmp_path, capsys):
    table = digits_ssl.run(quick=True, out=tmp_path, epochs=2, overrides=TINY)
    assert (tmp_path / "runs" / "digits_emi_full_s0" / "last.pt").is_file()  # shipped config
    assert list(table["objective"]) == ["emi", "emi", "mio", "mio"]
    assert list(table["encoder"]) == ["random", "trained"] * 2
    for col in ("probe_10_per_class", "probe_all_labels", "knn_all_labels"):
        assert table[col].between(10.0, 100.0).all(), col  # 10 classes: chance is 10 %
    assert (table["probe_10_per_class_std"] >= 0).all() and (table["epochs"] == 2).all()
    trained = table[table["encoder"] == "trained"]
    assert set(trained["verdict"]) <= {"healthy", "dimensional_collapse", "complete_collapse"}
    on_disk = pd.read_csv(tmp_path / "digits_ssl.csv")
    assert len(on_disk) == 4 and json.loads((tmp_path / "digits_ssl.json").read_text())["quick"]
    for obj in ("emi", "mio"):
        report = json.loads((tmp_path / "diagnose" / obj / "report.json").read_text())
        assert report["kind"] == "checkpoint"
        assert (tmp_path / "diagnose" / obj / "spectrum_projector.png").is_file()
        row = trained[trained["objective"] == obj].iloc[0]
        assert row["verdict"] == report["layers"]["projector"]["verdict"]
    curves = pd.read_csv(tmp_path / "digits_ssl_curves.csv")
    for obj in ("emi", "mio"):
        g = curves[curves["objective"] == obj]
        assert sorted(g["epoch"]) == [1, 2]
        assert g["knn_top1"].notna().all() and g["proj_effective_rank"].notna().all()
    out = capsys.readouterr().out
    assert "probe 10/class" in out and "trained" in out
