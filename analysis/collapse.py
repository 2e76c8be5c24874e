"""Collapse on digits: spectra of EMI, MIO and a collapsing control, epoch by epoch.

Each objective is trained with the real trainer (:func:`trainers.pretrain.train`, the
``trainers/configs/digits_<objective>.yaml`` configs: small CNN on sklearn digits) writing a
checkpoint every epoch; every checkpoint is then diagnosed like
``python -m mitools.diagnose`` does: projector embeddings of the digits val split (359 images,
eval transform) -> :func:`mitools.spectrum.collapse_report`.

Objectives: ``emi``, ``mio`` and ``alignment`` (``digits_alignment.yaml``: symmetrised negative
cosine without predictor, stop-gradient or momentum encoder; expected to collapse); the full run
adds the baselines ``simclr`` and ``vicreg`` (the digits EMI config with the loss swapped).

Writes ``collapse.csv`` (one row per objective, epoch: RankMe, its fraction of d, participation
ratio, numerical rank, alpha-ReQ and R^2, normalised std, uniformity, verdict) and
``collapse_spectra.csv`` (the final epoch's singular values and centred covariance eigenvalues
per objective and index). ``--quick``: a narrower CNN (widths 16-32-32, projector 64-32), 3
epochs at batch 128 (33 steps; 6-25 s per objective on one thread of a busy 2-core machine;
the whole quick run measured 17-55 s); full: the configs as they
are, 30 epochs. Epoch 0 is left out on purpose: an untrained network in eval mode uses BN running
statistics that were never updated, and its embeddings look collapsed (measured: RankMe 1.8 of 32,
verdict complete_collapse), which says nothing about the objective.

    python -m analysis.collapse [--quick] [--out results] [--seed 0]
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._common import base_parser, progress, write_table

NAME = "collapse"
SPECTRA_NAME = "collapse_spectra"
# objective -> (config under trainers/configs, extra overrides). Baselines reuse the digits EMI
# config (same data, model and optimiser) with the loss swapped for its registry defaults.
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "emi": ("digits_emi.yaml", ()),
    "mio": ("digits_mio.yaml", ()),
    "alignment": ("digits_alignment.yaml", ()),
    "simclr": ("digits_emi.yaml", ("loss.name=simclr", "loss.params={}")),
    "vicreg": ("digits_emi.yaml", ("loss.name=vicreg", "loss.params={}")),
}
OBJECTIVES = ("emi", "mio", "alignment")
FULL_OBJECTIVES = ("emi", "mio", "simclr", "vicreg", "alignment")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "trainers" / "configs"
QUICK_OVERRIDES = (
    "model.widths=[16, 32, 32]",
    "model.projector_dims=[64, 32]",
    "data.batch_size=128",
)


def train_objective(
    objective: str,
    run_dir: Path,
    *,
    epochs: int,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
) -> Path:
    """Train ``digits_<objective>.yaml`` for ``epochs`` with a checkpoint per epoch; run folder.

    Online evaluation is switched off (the diagnosis below replaces it).
    """
    from trainers.config import load_config
    from trainers.pretrain import train

    if objective not in RUNS:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(RUNS)}")
    config_name, extra = RUNS[objective]
    config = CONFIG_DIR / config_name
    sets = [
        *extra,
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        f"train.run_dir={run_dir}",
        "train.checkpoint_every_epochs=1",
        "train.device=cpu",
        f"eval.every_epochs={epochs + 1}",
        *overrides,
    ]
    cfg = load_config(config, sets)
    train(cfg)
    return run_dir


def diagnose_checkpoint(path: Path, *, split: str = "val", seed: int = 0):
    """Projector :class:`~mitools.spectrum.CollapseReport` of a digits checkpoint."""
    from mitools.data import build_dataset, eval_transform
    from mitools.diagnose import diagnose, embed, load_input

    loaded = load_input(path)
    dataset = build_dataset("digits", None, split, transform=eval_transform("digits"))
    z = embed(loaded.model, dataset, ("projector",), seed=seed)
    return diagnose(z, seed=seed)["projector"]


def run(
    quick: bool,
    out: Path,
    seed: int = 0,
    objectives: tuple[str, ...] | None = None,
    epochs: int | None = None,
    run_root: Path | None = None,
    threads: int | None = 1,
) -> pd.DataFrame:
    """Train each objective, diagnose every epoch, write the two CSVs; returns collapse.csv.

    ``threads``: torch CPU threads while training (restored after). These models are tiny: on a
    shared 2-core machine one thread measured 25 s where the default two took 108 s (the same
    quick run), so the default is 1; None leaves the setting alone.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(quick, out, seed, objectives, epochs, run_root)
    finally:
        torch.set_num_threads(previous)


def _run(
    quick: bool,
    out: Path,
    seed: int,
    objectives: tuple[str, ...] | None,
    epochs: int | None,
    run_root: Path | None,
) -> pd.DataFrame:
    epochs = epochs if epochs is not None else (3 if quick else 30)
    objectives = objectives or (OBJECTIVES if quick else FULL_OBJECTIVES)
    overrides = QUICK_OVERRIDES if quick else ()
    rows, spectra = [], []
    with tempfile.TemporaryDirectory(prefix="mitools_collapse_") as tmp:
        root = Path(run_root) if run_root is not None else Path(tmp)
        for objective in progress(objectives, "objectives"):
            run_dir = train_objective(
                objective, root / objective, epochs=epochs, seed=seed, overrides=overrides
            )
            for epoch in range(1, epochs + 1):
                r = diagnose_checkpoint(run_dir / f"epoch_{epoch:04d}.pt", seed=seed)
                rows.append(
                    {
                        "objective": objective,
                        "epoch": epoch,
                        "dim": r.dim,
                        "n_samples": r.n_samples,
                        "effective_rank": r.effective_rank,
                        "effective_rank_fraction": r.effective_rank_fraction,
                        "participation_ratio": r.participation_ratio,
                        "numerical_rank": r.numerical_rank,
                        "alpha_req": r.alpha_req.alpha if r.alpha_req else math.nan,
                        "alpha_req_r2": r.alpha_req.r_squared if r.alpha_req else math.nan,
                        "normalized_std": r.normalized_std,
                        "normalized_std_healthy": r.normalized_std_healthy,
                        "uniformity": r.uniformity,
                        "verdict": r.verdict,
                    }
                )
            for k, (s, lam) in enumerate(
                zip(
                    r.singular_values,
                    r.covariance_eigenvalues[: r.singular_values.size],
                    strict=True,
                )
            ):
                spectra.append(
                    {
                        "objective": objective,
                        "epoch": epochs,
                        "index": k + 1,
                        "singular_value": float(s),
                        "covariance_eigenvalue": float(lam),
                        "effective_rank": r.effective_rank,
                    }
                )
    df = pd.DataFrame(rows)
    meta = {
        "quick": quick,
        "seed": seed,
        "epochs": epochs,
        "objectives": list(objectives),
        "overrides": list(overrides),
        "layer": "projector",
        "data": "digits val (359 images)",
    }
    write_table(df, out, NAME, meta=meta)
    write_table(pd.DataFrame(spectra), out, SPECTRA_NAME, meta=meta)
    return df


def main(argv: list[str] | None = None) -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    df = run(args.quick, args.out, args.seed)
    last = df.sort_values("epoch").groupby("objective").tail(1)
    print(last[["objective", "epoch", "effective_rank", "normalized_std", "verdict"]].to_string())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
