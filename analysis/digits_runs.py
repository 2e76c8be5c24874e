"""Trainer runs on sklearn digits, made once and reused by every analysis and figure.

One run = :func:`trainers.pretrain.train` on ``trainers/configs/<config>`` (see :data:`OBJECTIVES`)
with a checkpoint per epoch (``epoch_0001.pt``, ``epoch_0002.pt``, ... and ``last.pt``), the
trainer's online monitoring every epoch (kNN / linear probe accuracy, effective rank and
normalised std of the projections in the ``"kind": "epoch"`` lines of ``metrics.jsonl``), on the
CPU, in ``root / f"digits_{objective}_{quick|full}_s{seed}"`` (:func:`run_dir_for`).

:func:`ensure_run` decides from what the folder holds:

- **complete** (``digits_run.json`` stamp with the same resolved settings, ``last.pt`` at the
  final epoch, every ``epoch_XXXX.pt`` present): reused, nothing is trained;
- **partial** (same settings, ``last.pt`` before the final epoch, e.g. an interrupted run):
  continued with the trainer's ``resume="auto"`` (newest valid checkpoint); ``metrics.jsonl``
  lines past the resumed step are dropped first, so the log has one record per step / epoch;
- otherwise (no run, other settings, no valid ``last.pt``): the trainer's files are removed and
  the run is trained from scratch.

"Same settings" compares the whole resolved trainer config (YAML files + overrides, so an edit of
a digits config also triggers a retrain) except the keys that do not change the numbers
(:data:`IGNORED_KEYS`: run folder, progress bar, TensorBoard).

Quick runs (CI, ``--quick``) narrow the CNN (:data:`QUICK_OVERRIDES`) and train
:data:`QUICK_EPOCHS` epochs; full runs use the configs as they are for :data:`FULL_EPOCHS` (30)
epochs, half of the configs' 60: the figures (and the main job) then train in minutes, and their
documented numbers are 30-epoch runs (:mod:`analysis.seed_gain` compares the two lengths).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_DIR",
    "FULL_EPOCHS",
    "IGNORED_KEYS",
    "OBJECTIVES",
    "QUICK_EPOCHS",
    "QUICK_OVERRIDES",
    "RUN_OVERRIDES",
    "STAMP_NAME",
    "ensure_run",
    "ensure_runs",
    "resolve_config",
    "run_dir_for",
    "run_state",
    "torch_threads",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "trainers" / "configs"
# objective -> (config file under trainers/configs, extra overrides). The baseline configs are
# the digits EMI config (same data, CNN and optimiser) with the loss swapped for its registry
# defaults (tests/test_trainer.py checks that they resolve to exactly that).
OBJECTIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "emi": ("digits_emi.yaml", ()),
    "mio": ("digits_mio.yaml", ()),
    "alignment": ("digits_alignment.yaml", ()),
    "simclr": ("digits_simclr.yaml", ()),
    "vicreg": ("digits_vicreg.yaml", ()),
    "barlow_twins": ("digits_barlow_twins.yaml", ()),
}
QUICK_EPOCHS = 3
FULL_EPOCHS = 30  # the configs ship 60 (module docstring)
QUICK_OVERRIDES: tuple[str, ...] = (
    "model.widths=[16, 32, 32]",
    "model.projector_dims=[64, 32]",
    "data.batch_size=128",
)
# Every run: a checkpoint and the online monitoring after each epoch, on the CPU.
RUN_OVERRIDES: tuple[str, ...] = (
    "train.checkpoint_every_epochs=1",
    "eval.every_epochs=1",
    "train.device=cpu",
)
IGNORED_KEYS = ("train.run_dir", "train.progress", "train.tensorboard")
STAMP_NAME = "digits_run.json"
_TRAINER_FILES = ("last.pt", "metrics.jsonl", "config.yaml", STAMP_NAME)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


def run_dir_for(objective: str, root: Path, quick: bool, seed: int = 0) -> Path:
    """``root / f"digits_{objective}_{'quick' if quick else 'full'}_s{seed}"``."""
    _check_objective(objective)
    return Path(root) / f"digits_{objective}_{'quick' if quick else 'full'}_s{seed}"


def resolve_config(
    objective: str,
    run_dir: Path,
    *,
    quick: bool,
    seed: int = 0,
    epochs: int | None = None,
    overrides: Iterable[str] = (),
):
    """The trainer :class:`~trainers.config.Config` of one run: the objective's config file, its
    extra overrides, :data:`RUN_OVERRIDES`, :data:`QUICK_OVERRIDES` when ``quick``, epochs (default
    :data:`QUICK_EPOCHS` / :data:`FULL_EPOCHS`), seed and run folder, then ``overrides`` (last
    wins)."""
    from trainers.config import load_config

    _check_objective(objective)
    epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    config_name, extra = OBJECTIVES[objective]
    # The trainer formats run_dir with str.format: braces in a path must be doubled.
    folder = str(Path(run_dir)).replace("{", "{{").replace("}", "}}")
    sets = [
        *extra,
        *RUN_OVERRIDES,
        *(QUICK_OVERRIDES if quick else ()),
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        f"train.run_dir={folder}",
        *overrides,
    ]
    return load_config(CONFIG_DIR / config_name, sets)


def _settings(cfg: Any) -> dict[str, Any]:
    from trainers.config import config_to_dict

    settings = config_to_dict(cfg)
    for key in IGNORED_KEYS:
        section, leaf = key.split(".")
        settings[section].pop(leaf, None)
    return settings


def _last_state(run_dir: Path) -> tuple[int, int, int] | None:
    """(epoch, step, batch_in_epoch) of ``last.pt``, or None when absent or unreadable."""
    from mitools.checkpoint import CheckpointError, load_checkpoint

    path = run_dir / "last.pt"
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, map_location="cpu")
    except (CheckpointError, OSError):
        return None
    return int(state["epoch"]), int(state["step"]), int(state.get("batch_in_epoch", 0) or 0)


def run_state(run_dir: Path, cfg: Any, objective: str) -> str:
    """ "complete", "partial" or "missing" (nothing reusable: no run, other settings, no valid
    ``last.pt``) for the run ``cfg`` in ``run_dir`` (rules in the module docstring)."""
    stamp_path = Path(run_dir) / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return "missing"
    if stamp.get("objective") != objective or stamp.get("settings") != _settings(cfg):
        return "missing"
    last = _last_state(Path(run_dir))
    if last is None:
        return "missing"
    epoch, _, batch_in_epoch = last
    epochs = cfg.train.epochs
    if epoch > epochs:
        return "missing"
    every_epoch = all((Path(run_dir) / f"epoch_{e:04d}.pt").is_file() for e in range(1, epoch + 1))
    if not every_epoch:
        return "missing"
    return "complete" if epoch == epochs and batch_in_epoch == 0 else "partial"


def _clear(run_dir: Path) -> None:
    """Remove the trainer's files (and only those) from ``run_dir``."""
    for name in _TRAINER_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob("epoch_*.pt"):
        path.unlink()
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch CPU threads set to ``threads`` inside the block, restored after (None: unchanged)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _caller_rng() -> Iterator[None]:
    """The trainer seeds the global RNGs (random, numpy, torch); give the caller its own back."""
    from mitools.checkpoint import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def ensure_run(
    objective: str,
    root: Path,
    *,
    quick: bool,
    seed: int = 0,
    epochs: int | None = None,
    threads: int | None = 1,
    overrides: Iterable[str] = (),
) -> Path:
    """The run folder of ``objective`` (:func:`run_dir_for`), trained, resumed or reused.

    ``threads``: torch CPU threads while training, restored after (None: leave as is). These
    models are tiny: on a busy 2-core machine one thread measured about 4x faster than two.
    ``overrides``: extra trainer ``key=value`` strings applied last (part of the settings).
    Raises ValueError for an unknown objective (listing the known ones).
    """
    from trainers.pretrain import train

    run_dir = run_dir_for(objective, root, quick, seed)
    overrides = tuple(overrides)
    cfg = resolve_config(
        objective, run_dir, quick=quick, seed=seed, epochs=epochs, overrides=overrides
    )
    label = f"digits {objective} ({'quick' if quick else 'full'}, seed {seed})"
    state = run_state(run_dir, cfg, objective)
    if state == "complete":
        print(f"reusing {label} <- {run_dir}", file=sys.stderr)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if state == "partial":
        last = _last_state(run_dir)
        assert last is not None
        # the trainer drops metrics.jsonl records past the step it resumes from
        print(f"resuming {label} at epoch {last[0]} -> {run_dir}", file=sys.stderr)
        resume: str | None = "auto"
    else:
        print(f"training {label} -> {run_dir}", file=sys.stderr)
        _clear(run_dir)
        stamp = {
            "objective": objective,
            "quick": quick,
            "seed": seed,
            "epochs": cfg.train.epochs,
            "config_file": OBJECTIVES[objective][0],
            "overrides": [*OBJECTIVES[objective][1], *overrides],
            "settings": _settings(cfg),
        }
        tmp = run_dir / f".{STAMP_NAME}.tmp"
        tmp.write_text(json.dumps(stamp, indent=2))
        os.replace(tmp, run_dir / STAMP_NAME)
        resume = None
    with torch_threads(threads), _caller_rng():
        summary = train(cfg, resume=resume)
    if summary.get("interrupted"):
        raise KeyboardInterrupt(f"training of {label} interrupted; rerun to resume it")
    return run_dir


def ensure_runs(
    objectives: Iterable[str],
    root: Path,
    *,
    quick: bool,
    seed: int = 0,
    epochs: int | None = None,
    threads: int | None = 1,
    overrides: Iterable[str] = (),
) -> dict[str, Path]:
    """:func:`ensure_run` for each objective (all names are checked before any training);
    ``{objective: run folder}`` in the given order."""
    objectives = list(objectives)
    for objective in objectives:
        _check_objective(objective)
    overrides = tuple(overrides)
    return {
        objective: ensure_run(
            objective,
            root,
            quick=quick,
            seed=seed,
            epochs=epochs,
            threads=threads,
            overrides=overrides,
        )  # fmt: skip
        for objective in objectives
    }
