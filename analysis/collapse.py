"""Collapse on digits: spectra of EMI, MIO and a collapsing control, epoch by epoch.

Each objective's run comes from :mod:`analysis.digits_runs` (the real trainer on the
``trainers/configs/digits_*.yaml`` configs, small CNN on sklearn digits, a checkpoint per epoch),
made once under ``run_root`` (default ``out / "runs"``) and reused by every driver and figure that
writes to the same results folder. Every epoch checkpoint is diagnosed like
``python -m mitools.diagnose`` does: projector embeddings of the digits val split (359 images,
eval transform) -> :func:`mitools.spectrum.collapse_report`.

Objectives: ``emi``, ``mio`` and ``alignment`` (``digits_alignment.yaml``: symmetrised negative
cosine without predictor, stop-gradient or momentum encoder; expected to collapse); the full run
adds the baselines ``simclr`` and ``vicreg`` (the digits EMI config with the loss swapped).

Writes ``collapse.csv`` (one row per objective, epoch: RankMe, its fraction of d, participation
ratio, numerical rank, alpha-ReQ and R^2, normalised std, uniformity, verdict) and
``collapse_spectra.csv`` (the final epoch's singular values and centred covariance eigenvalues
per objective and index). ``--quick``: the quick digits runs (narrower CNN,
:data:`~analysis.digits_runs.QUICK_OVERRIDES`, :data:`~analysis.digits_runs.QUICK_EPOCHS`
epochs); full: the configs as they are, :data:`~analysis.digits_runs.FULL_EPOCHS` epochs.
Epoch 0 is left out on purpose: an untrained network in eval mode uses BN running statistics that
were never updated, and its embeddings look collapsed (measured: RankMe 1.8 of 32, verdict
complete_collapse), which says nothing about the objective.

    python -m analysis.collapse [--quick] [--out results] [--seed 0]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import digits_runs
from analysis._common import base_parser, progress, write_table

NAME = "collapse"
SPECTRA_NAME = "collapse_spectra"
OBJECTIVES = ("emi", "mio", "alignment")
FULL_OBJECTIVES = ("emi", "mio", "simclr", "vicreg", "alignment")


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
    """Make or reuse each objective's digits run, diagnose every epoch, write the two CSVs;
    returns collapse.csv.

    ``run_root``: where the runs live (default ``out / "runs"``, shared with the other drivers).
    ``epochs``: default :data:`~analysis.digits_runs.QUICK_EPOCHS` / ``FULL_EPOCHS``; another
    value retrains the runs in ``run_root`` (their settings change). ``threads``: torch CPU
    threads while training and diagnosing (restored after); these models are tiny: on a shared
    2-core machine one thread measured 25 s where the default two took 108 s (the same quick
    run), so the default is 1; None leaves the setting alone.
    """
    out = Path(out)
    objectives = tuple(objectives or (OBJECTIVES if quick else FULL_OBJECTIVES))
    root = Path(run_root) if run_root is not None else out / "runs"
    with digits_runs.torch_threads(threads):
        folders = digits_runs.ensure_runs(objectives, root, quick=quick, seed=seed, epochs=epochs,
                                          threads=None)  # fmt: skip
        rows, spectra, n_epochs = _diagnose_runs(folders, seed)
    meta = {
        "quick": quick,
        "seed": seed,
        "epochs": n_epochs,
        "objectives": list(objectives),
        "runs": {k: str(v) for k, v in folders.items()},
        "overrides": list(digits_runs.QUICK_OVERRIDES if quick else ()),
        "layer": "projector",
        "data": "digits val (359 images)",
    }
    df = pd.DataFrame(rows)
    write_table(df, out, NAME, meta=meta)
    write_table(pd.DataFrame(spectra), out, SPECTRA_NAME, meta=meta)
    return df


def synthetic_reports(n: int, d: int = 256, rank: int = 8, seed: int = 0) -> pd.DataFrame:
    """The collapse statistics and verdict of three synthetic embeddings (n x d) with known
    answers: isotropic Gaussian (healthy), a rank-``rank`` product of Gaussians (dimensional
    collapse) and one repeated row (complete collapse). One row per case."""
    from mitools.spectrum import collapse_report

    rng = np.random.default_rng(seed)
    cases = {
        "isotropic": rng.standard_normal((n, d)),
        f"rank {rank}": rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)),
        "constant": np.tile(rng.standard_normal(d), (n, 1)),
    }
    rows = []
    for name, z in cases.items():
        r = collapse_report(z)
        rows.append({
            "case": name, "RankMe": r.effective_rank,
            "participation ratio": r.participation_ratio, "numerical rank": r.numerical_rank,
            "normalized std": r.normalized_std, "uniformity": r.uniformity, "verdict": r.verdict,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _epoch_checkpoints(run_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in sorted(run_dir.glob("epoch_*.pt"))}


def _diagnose_runs(folders: dict[str, Path], seed: int) -> tuple[list[dict], list[dict], int]:
    rows, spectra = [], []
    jobs = [(obj, ep, path) for obj, folder in folders.items()
            for ep, path in sorted(_epoch_checkpoints(folder).items())]  # fmt: skip
    last_epoch = {obj: max(ep for o, ep, _ in jobs if o == obj) for obj in folders}
    for objective, epoch, path in progress(jobs, "diagnose"):
        r = diagnose_checkpoint(path, seed=seed)
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
        if epoch != last_epoch[objective]:
            continue
        eigenvalues = r.covariance_eigenvalues[: r.singular_values.size]
        for k, (s, lam) in enumerate(zip(r.singular_values, eigenvalues, strict=True)):
            spectra.append(
                {
                    "objective": objective,
                    "epoch": epoch,
                    "index": k + 1,
                    "singular_value": float(s),
                    "covariance_eigenvalue": float(lam),
                    "effective_rank": r.effective_rank,
                }
            )
    return rows, spectra, max(last_epoch.values())


def main(argv: list[str] | None = None) -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    df = run(args.quick, args.out, args.seed)
    last = df.sort_values("epoch").groupby("objective").tail(1)
    print(last[["objective", "epoch", "effective_rank", "normalized_std", "verdict"]].to_string())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
