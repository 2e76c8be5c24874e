"""Bad input to the trainer that must fail in one line BEFORE any work: a --resume checkpoint
from another model, loss or optimiser, a corrupt one, a batch larger than the dataset,
SyncBatchNorm on the CPU, a mistyped loss parameter; and the CLI's final JSON after a signal."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from trainers import pretrain
from trainers.config import ConfigError, load_config
from trainers.pretrain import check_resume, preflight, train

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"

# One step of a very small EMI model: enough for a checkpoint with every kind of state.
SMALL = [
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "train.progress=false",
    "train.tensorboard=false",
    "data.batch_size=64",
    "model.widths=[8,16,16]",
    "model.projector_dims=[16,8]",
    "eval.every_epochs=0",
]


def _cli_args(run_dir: Path, extra: list[str], config: str = "digits_emi.yaml") -> list[str]:
    sets = [*SMALL, f"train.run_dir={run_dir}", *extra]
    return ["--config", str(CONFIGS / config), *sum((["--set", s] for s in sets), [])]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("small_run")
    train(load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={run_dir}"]))
    return run_dir / "last.pt"


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if the CLI gets as far as training."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(pretrain, "train", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize(
    ("extra", "config", "named"),
    [
        (["model.widths=[8,16,32]"], "digits_emi.yaml", r"widths: \[8, 16, 16\] \(checkpoint\)"),
        (["model.projector_dims=[32,8]"], "digits_emi.yaml", r"projector_dims"),
        (
            ["model.projector_last_bn=false"],
            "digits_mio.yaml",
            r"loss.name: checkpoint 'emi', config 'mio'",
        ),
        (["optim.name=lars"], "digits_emi.yaml", r"optim.name: checkpoint 'adamw', config 'lars'"),
        (["model.momentum_encoder=true"], "digits_emi.yaml", r"has no momentum encoder"),
    ],
)
def test_resume_from_another_run_is_a_one_line_error_before_work(
    small_checkpoint, tmp_path, capsys, no_training, extra, config, named
):
    args = _cli_args(tmp_path / "run", extra, config) + ["--resume", str(small_checkpoint)]
    assert pretrain.main(args) == 2
    line = _one_line_error(capsys)
    assert str(small_checkpoint) in line
    assert re.search(named, line), line


def test_resume_of_a_checkpoint_without_spec_checks_the_weights(small_checkpoint, tmp_path):
    # Checkpoints from other tools may lack the stored encoder spec: the weights are checked.
    state = torch.load(small_checkpoint, weights_only=True)
    del state["encoder_spec"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    cfg = load_config(CONFIGS / "digits_emi.yaml", [*SMALL, "model.widths=[8,16,32]"])
    with pytest.raises(ConfigError, match=r"another architecture.*shape mismatches"):
        check_resume(cfg, str(bare))
    # the same file with the matching config passes and names the file to load
    cfg = load_config(CONFIGS / "digits_emi.yaml", SMALL)
    assert check_resume(cfg, str(bare)) == bare


def test_resume_auto_checks_the_newest_checkpoint(small_checkpoint, tmp_path, capsys, no_training):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(small_checkpoint.read_bytes())
    args = _cli_args(run_dir, ["model.widths=[8,16,32]"]) + ["--resume", "auto"]
    assert pretrain.main(args) == 2
    assert "another encoder" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("content", "named"),
    [(b"not a checkpoint\n", "a text file"), (b"PK\x03\x04" + b"\0" * 100, "corrupt")],
)
def test_unreadable_resume_file_is_a_one_line_error(tmp_path, capsys, no_training, content, named):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert pretrain.main(_cli_args(tmp_path / "run", []) + ["--resume", str(bad)]) == 2
    line = _one_line_error(capsys)
    assert named in line and str(bad) in line


def test_missing_resume_file_is_a_one_line_error(tmp_path, capsys, no_training):
    missing = tmp_path / "nope.pt"
    assert pretrain.main(_cli_args(tmp_path / "run", []) + ["--resume", str(missing)]) == 2
    assert f"no checkpoint file at {missing}" in _one_line_error(capsys)


def test_programmatic_train_checks_resume_before_building_data(
    small_checkpoint, tmp_path, monkeypatch
):
    import mitools.data.datasets as datasets

    def refuse(*args, **kwargs):
        raise AssertionError("dataset built before the resume check")

    monkeypatch.setattr(datasets, "build_dataset", refuse)
    cfg = load_config(
        CONFIGS / "digits_emi.yaml", [*SMALL, "model.widths=[8,16,32]", f"train.run_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="another encoder"):
        train(cfg, resume=str(small_checkpoint))


def test_batch_larger_than_the_dataset(tmp_path, capsys, no_training):
    # digits' pre-training split has 1438 images (tests/test_data_datasets.py)
    assert pretrain.main(_cli_args(tmp_path / "run", ["data.batch_size=2000"])) == 2
    line = _one_line_error(capsys)
    assert "data.batch_size=2000" in line and "1438 images" in line


def test_batch_check_names_the_share_of_each_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(
        CONFIGS / "digits_emi.yaml", [*SMALL, "data.batch_size=1600", f"train.run_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match=r"1438 images, 719 per rank for 2 ranks"):
        preflight(cfg)
    cfg = load_config(
        CONFIGS / "digits_emi.yaml", [*SMALL, "data.batch_size=1438", f"train.run_dir={tmp_path}"]
    )
    preflight(cfg)  # 719 per rank, one full batch each


def test_sync_batchnorm_on_cpu_ranks_is_refused(tmp_path, monkeypatch):
    extra = ["model.sync_batchnorm=true", "train.device=cpu", f"train.run_dir={tmp_path}"]
    cfg = load_config(CONFIGS / "digits_emi.yaml", [*SMALL, *extra])
    preflight(cfg)  # a single process never converts to SyncBatchNorm
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        preflight(cfg)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("loss.params.ridge=abc", r"loss.params.ridge: expected a number, got 'abc' \(str\)"),
        ("loss.params.center=1", r"loss.params.center: expected true or false, got 1"),
        ("loss.params.order=true", r"loss.params.order: expected a number, got True"),
    ],
)
def test_mistyped_loss_parameter_is_named(setting, named):
    cfg = load_config(CONFIGS / "digits_emi.yaml", [setting])
    with pytest.raises(ConfigError, match=named):
        pretrain.build_loss_from_config(cfg)


def test_interrupted_run_reports_where_it_stopped(tmp_path, capsys, monkeypatch):
    # SIGTERM during the second epoch's second step: the final JSON must give the checkpoint's
    # position, not that of the last finished epoch.
    calls = {"n": 0}
    real = pretrain.ssl_loss

    def loss_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain, "ssl_loss", loss_then_signal)
    extra = ["train.epochs=2", "train.max_steps_per_epoch=3"]
    # exit status as for a process killed by SIGTERM (128 + 15): the run is not finished
    assert pretrain.main(_cli_args(tmp_path / "run", extra)) == 143
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert out["interrupted"] is True
    assert (out["epoch"], out["step"]) == (state["epoch"], state["step"]) == (1, 4)


def test_missing_tensorboard_is_named_before_work(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import now raises ImportError
    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        [*SMALL, "train.tensorboard=true", f"train.run_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(
        ConfigError, match="pip install tensorboard, or set train.tensorboard=false"
    ):
        preflight(cfg)
    assert not (tmp_path / "run").exists()
    cfg.train.tensorboard = False
    preflight(cfg)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("optim.lr=-0.1", "optim.lr must be a finite number > 0, got -0.1"),
        ("optim.lr=.nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("optim.warmup_epochs=-5", "optim.warmup_epochs must be >= 0"),
        ("optim.final_lr_ratio=2", r"optim.final_lr_ratio must be in \[0, 1\]"),
        ("model.momentum_base=1.5", r"model.momentum_base must be in \[0, 1\], got 1.5"),
        ("model.momentum_buffers=bogus", "model.momentum_buffers must be 'own', 'copy' or 'ema'"),
        ("eval.knn_k=0", "eval.knn_k must be >= 1, got 0"),
        ("eval.knn_temperature=0", "eval.knn_temperature must be > 0"),
        ("eval.max_samples=0", "eval.max_samples must be >= 2"),
        ("train.checkpoint_every_epochs=-1", "train.checkpoint_every_epochs must be >= 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        # the preset's normalisation has 3 channels, digits 1
        ("data.preset=cifar", r"data.preset='cifar' for digits: cifar: mean/std need 3 values"),
        ("data.view={crop_scal: [0.8, 1.0]}", r"'data.view.crop_scal'; did you mean 'data.view.crop_scale'"),
        ("data.view={size: 16}", r"unknown augmentation field 'data.view.size'"),
        ("data.view={crop_scale: [0.8, 1.5]}", r"data.view: ViewConfig.crop_scale must satisfy"),
        ("model.predictor_dims=[64,4]", r"predictor_dims must end in the projection dim 8"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_errors_before_work(tmp_path, capsys, no_training, setting, named):
    """Each of these used to pass preflight and fail later (some after a full training epoch,
    before its checkpoint) or be silently adjusted (knn_k=0 ran as k=1)."""
    assert pretrain.main(_cli_args(tmp_path / "run", [setting])) == 2
    assert re.search(named, _one_line_error(capsys)), named
    assert not (tmp_path / "run").exists()


def test_view_overrides_and_asymmetry_reach_the_augmentation():
    """``data.view`` replaces ViewConfig fields on both views; ``data.asymmetric`` overrides the
    BYOL-only default. The truth is the preset built directly, with the same fields replaced."""
    from dataclasses import replace

    from mitools.data.augment import preset_for

    def preset(*sets):
        return pretrain.build_augment_preset(load_config(CONFIGS / "cifar10_mio.yaml", list(sets)))

    plain = preset_for("cifar10")
    assert preset() == plain
    got = preset("data.view={crop_scale: [0.8, 1.0], saturation: 0.4, solarize_p: 0.2}")
    want = dict(crop_scale=(0.8, 1.0), saturation=0.4, solarize_p=0.2)
    assert got.view1 == replace(plain.view1, **want) and got.view2 == replace(plain.view2, **want)
    assert got.mean == plain.mean and got.std == plain.std
    assert preset("data.asymmetric=true") == preset_for("cifar10", asymmetric=True)
    byol = pretrain.build_augment_preset(load_config(CONFIGS / "cifar10_byol.yaml"))
    assert byol == preset_for("cifar10", asymmetric=True)
    byol_sym = load_config(CONFIGS / "cifar10_byol.yaml", ["data.asymmetric=false"])
    assert pretrain.build_augment_preset(byol_sym) == plain


def test_new_run_in_a_folder_holding_a_run_is_refused(small_checkpoint, capsys, no_training):
    """A fresh run would replace last.pt and config.yaml, append to metrics.jsonl and leave the
    old epoch_*.pt files for a later --resume auto to pick (an lr sweep with one run_dir did)."""
    run_dir = small_checkpoint.parent
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    assert pretrain.main(_cli_args(run_dir, ["optim.lr=0.01"])) == 2
    line = _one_line_error(capsys)
    assert f"train.run_dir {run_dir} already holds a run (last.pt, metrics.jsonl)" in line
    assert "--resume auto" in line
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    with pytest.raises(ConfigError, match="already holds a run"):  # the programmatic entry too
        train(load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={run_dir}"]))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["optim.lr=0.01"], r"optim.lr: checkpoint 0.002, config 0.01"),
        (["train.epochs=3"], r"train.epochs: checkpoint 1, config 3"),
        (["loss.params.ridge=0.001"], r"loss.params: checkpoint \{.*'ridge': 0.0001.*config"),
        (["data.batch_size=32", "train.seed=1"],
         r"data.batch_size: checkpoint 64, config 32; train.seed: checkpoint 0, config 1"),
    ],
)  # fmt: skip
def test_resume_with_other_training_settings_is_refused(small_checkpoint, tmp_path, extra, named):
    """The optimiser state and the schedules (laid out for the checkpoint's train.epochs) come
    from the checkpoint: before this check a new lr was silently ignored, and more epochs ran at
    the schedule's final lr (0)."""
    cfg = load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={tmp_path}", *extra])
    with pytest.raises(ConfigError, match=named):
        check_resume(cfg, str(small_checkpoint))


def test_resume_may_change_operational_settings(small_checkpoint, tmp_path):
    extra = ["eval.every_epochs=1", "train.log_every_steps=5", "train.checkpoint_every_epochs=1",
             "data.num_workers=1", "train.tensorboard=true", "train.amp=off", "data.root=/elsewhere"]  # fmt: skip
    cfg = load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={tmp_path}", *extra])
    assert check_resume(cfg, str(small_checkpoint)) == small_checkpoint


def test_taylor_options_with_the_exact_log_det_are_named():
    """digits_emi uses the exact log-det: a Taylor order set there used to be silently unused."""
    cfg = load_config(CONFIGS / "digits_emi.yaml", ["loss.params.order=8"])
    with pytest.raises(ConfigError, match=r"loss.params.order has no effect with .*'exact'"):
        pretrain.build_loss_from_config(cfg)
    taylor = load_config(CONFIGS / "digits_emi.yaml", ["loss.params.order=8", "loss.params.logdet=taylor"])  # fmt: skip
    assert pretrain.build_loss_from_config(taylor).order == 8


def _spy_dataset_calls(monkeypatch) -> list[tuple]:
    """Record ("download", splits) and ("build", split, download) calls, in order."""
    import mitools.data.datasets as datasets

    calls: list[tuple] = []
    build, download = datasets.build_dataset, datasets.download_dataset

    def spy_build(name, root, split, **kwargs):
        calls.append(("build", split, kwargs.get("download", False)))
        return build(name, root, split, **kwargs)

    def spy_download(name, root, *, splits=None):
        calls.append(("download", tuple(splits)))
        return download(name, root, splits=splits)

    monkeypatch.setattr(datasets, "build_dataset", spy_build)
    monkeypatch.setattr(datasets, "download_dataset", spy_download)
    return calls


def test_cli_downloads_without_loading_twice(tmp_path, monkeypatch, capsys):
    """Through the CLI the preflight downloads, then train's own download finds the files:
    both are download-only calls, and every split is built twice at most (preflight's check,
    training), never with torchvision's download-and-load. It used to be built with
    download=True in both, each reading the split twice more."""
    calls = _spy_dataset_calls(monkeypatch)
    run = tmp_path / "run"
    argv = _cli_args(run, ["data.download=true"])
    assert pretrain.main(argv) == 0, capsys.readouterr().err
    downloads = [c for c in calls if c[0] == "download"]
    assert downloads == [("download", ("train", "val"))] * 2, calls
    assert calls[0][0] == "download"
    builds = [c for c in calls if c[0] == "build"]
    assert all(download is False for _, _, download in builds), builds
    assert max(Counter(split for _, split, _ in builds).values()) <= 2, builds


def test_programmatic_train_downloads_and_names_a_missing_dataset(tmp_path, monkeypatch):
    """train() (no CLI preflight) honours data.download (rank 0 of a single process downloads
    every split before building the data, without loading them: the builds that follow never
    download) and reports a missing dataset in one line."""
    calls = _spy_dataset_calls(monkeypatch)
    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        [*SMALL, "data.download=true", f"train.run_dir={tmp_path / 'a'}"],
    )
    train(cfg)
    assert calls[0] == ("download", ("train", "val")), calls  # digits' splits, once, first
    assert [c for c in calls if c[0] == "download"] == [calls[0]]
    assert all(c[2] is False for c in calls[1:]), calls  # builds load, they do not download
    missing = load_config(
        CONFIGS / "cifar10_emi.yaml",
        [*SMALL, "model.arch=small_cnn", f"data.root={tmp_path / 'nowhere'}", f"train.run_dir={tmp_path / 'b'}"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"dataset 'cifar10' not usable: .*cifar-10-batches-py"):
        train(missing)


def test_config_shapes_that_used_to_give_tracebacks(tmp_path, capsys, no_training):
    bad_defaults = tmp_path / "bad_defaults.yaml"
    bad_defaults.write_text("defaults: 5\n")
    with pytest.raises(ConfigError, match=r"'defaults' must be a file name or a list"):
        load_config(bad_defaults)
    with pytest.raises(ConfigError, match=r"'model' is a section; set one of its keys"):
        load_config(CONFIGS / "digits_emi.yaml", ["model=3"])
    # a scalar section stays an error when a --set adds a key to it (it was replaced by {},
    # silently dropping every train setting of the included files)
    scalar = tmp_path / "scalar_section.yaml"
    scalar.write_text(f"defaults: [{CONFIGS / 'digits_emi.yaml'}]\ntrain: 5\n")
    with pytest.raises(ConfigError, match=r"train: expected a mapping, got 5"):
        load_config(scalar, ["train.seed=1"])
    assert pretrain.main(_cli_args(tmp_path / "run_{foo}", [])) == 2
    assert re.search(
        r"train.run_dir=.*\{foo\}.*placeholders must be among", _one_line_error(capsys)
    )
    if not torch.cuda.is_available():
        assert pretrain.main(_cli_args(tmp_path / "run", ["train.device=cuda"])) == 2
        assert "CUDA is not available" in _one_line_error(capsys)


def test_resume_auto_without_a_checkpoint_starts_the_log_over(tmp_path):
    """A run killed before its first checkpoint left metrics.jsonl records; --resume auto finds
    no checkpoint and starts over, and the log holds the new run's records only."""
    fresh, killed = tmp_path / "fresh", tmp_path / "killed"
    train(load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={fresh}"]))
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"kind": "step", "epoch": 0, "step": 1, "loss": 9}\n')
    train(load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={killed}"]), "auto")
    drop = {"images_per_s"}
    rows = [{k: v for k, v in r.items() if k not in drop} for r in pretrain.read_metrics(killed)]
    assert rows == [
        {k: v for k, v in r.items() if k not in drop} for r in pretrain.read_metrics(fresh)
    ]
    assert rows and all(r.get("loss") != 9 for r in rows)


def test_emi_batch_smaller_than_its_covariance_is_named_before_work(tmp_path, capsys, no_training):
    """The exact ridge-free EMI covariance of d-dim projections needs 2d + 1 rows (joint form):
    a one-line error before any work (it was a traceback at the first step), counting the rows
    the loss really sees: twice the batch with a momentum target (both views' rows)."""
    d32 = ["model.projector_dims=[16,32]", "loss.params.ridge=0"]  # needs 65 rows

    def check(run: str, extra: list[str]) -> None:
        preflight(load_config(CONFIGS / "digits_emi.yaml", [*SMALL, *d32, *extra,
                                                            f"train.run_dir={tmp_path / run}"]))  # fmt: skip

    assert pretrain.main(_cli_args(tmp_path / "a", [*d32, "data.batch_size=48"])) == 2
    err = _one_line_error(capsys)
    assert re.search(r"data.batch_size=48 gives the EMI loss 48 rows, fewer than the 65", err)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="gives the EMI loss 64 rows, fewer than the 65"):
        check("b", ["data.batch_size=64"])
    check("c", ["data.batch_size=66"])
    check("d", ["data.batch_size=34", "model.momentum_encoder=true"])  # 68 rows
    with pytest.raises(ConfigError, match="gives the EMI loss 64 rows"):
        check("e", ["data.batch_size=32", "model.momentum_encoder=true"])
    check("f", ["data.batch_size=48", "loss.params.ridge=1e-4"])  # ridge: any batch is defined
    check("g", ["data.batch_size=48", "loss.params.covariance=ema"])


def test_resuming_a_finished_run_says_it_is_complete(small_checkpoint, tmp_path, capsys):
    import shutil

    run = tmp_path / "finished"
    shutil.copytree(small_checkpoint.parent, run)
    before = torch.load(run / "last.pt", weights_only=True)
    summary = train(
        load_config(CONFIGS / "digits_emi.yaml", [*SMALL, f"train.run_dir={run}"]), "auto"
    )
    assert "(epoch 1, step 1); the run is complete, nothing to train" in capsys.readouterr().err
    assert summary["step"] == before["step"] == 1 and summary["epoch"] == 1
