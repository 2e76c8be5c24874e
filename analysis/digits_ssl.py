"""EMI and MIO on digits, end to end: pre-train, evaluate against a random encoder, diagnose.

The embedded default story (no download; minutes on 2 CPU cores):

1. Pre-train: the trainer (``trainers/pretrain.py``, ``trainers/configs/digits_<objective>.yaml``)
   through :mod:`analysis.digits_runs`, which reuses finished runs, so the other digits analyses
   (collapse, Hessian spectra) and this one share the same checkpoints.
2. Evaluate (``trainers.linear_eval``, frozen backbone, unaugmented features, standardised, L-BFGS
   logistic regression): the linear probe with 10 labels per class (mean and std over
   :data:`LABEL_SEEDS` label subsets), with all labels, and the weighted cosine kNN (k = 200),
   each for the trained backbone AND for a randomly initialised encoder of the same architecture
   (the run's own initial weights: same seed, built the way the trainer builds it), on the digits
   val split (359 images).
3. Diagnose: ``python -m mitools.diagnose`` on the final checkpoint (its table is printed; its
   ``report.json`` and spectrum plots go to ``out/diagnose/<objective>/``).

Writes ``digits_ssl.csv`` (one row per objective and encoder: ``random`` / ``trained``) and
``digits_ssl_curves.csv`` (the trainer's per-epoch online monitoring from ``metrics.jsonl``:
loss, kNN and probe accuracy with all labels, effective ranks, normalised std).

    python -m analysis.digits_ssl [--quick] [--out results] [--objectives emi mio]
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis import digits_runs
from analysis._common import (
    base_parser,
    common_problem,
    fail,
    progress,
    run_and_record,
    write_table,
)

NAME = "digits_ssl"
CURVES_NAME = "digits_ssl_curves"
OBJECTIVES = ("emi", "mio")
LABEL_SEEDS = (0, 1, 2, 3, 4)
LABELS_PER_CLASS = 10


def random_init_backbone(checkpoint: Path) -> torch.nn.Module:
    """The encoder a run started from: same spec, weights drawn after ``manual_seed(seed)``."""
    from mitools.checkpoint import load_checkpoint
    from mitools.models import EncoderSpec, SSLModel

    state = load_checkpoint(checkpoint, map_location="cpu", required=("encoder_spec", "config"))
    seed = int(state["config"]["train"]["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the trainer seeds, then builds the model first
        model = SSLModel(EncoderSpec.from_dict(state["encoder_spec"]))
    return model.backbone


def probe_few_labels(backbone: torch.nn.Module) -> list[float]:
    """Linear-probe top-1 (%) with :data:`LABELS_PER_CLASS` labels per class, one value per label
    subset of :data:`LABEL_SEEDS` (the check of ``tests/test_trainer.py``)."""
    from trainers.linear_eval import evaluate_backbone

    return [
        evaluate_backbone(
            backbone, "digits", labels_per_class=LABELS_PER_CLASS, seed=s, knn=False
        ).linear_top1
        for s in LABEL_SEEDS
    ]


def few_label_probe_pair(checkpoint: Path) -> tuple[float, float]:
    """Mean :func:`probe_few_labels` accuracy (%) of the run's random initialisation and of its
    trained backbone at ``checkpoint``: the paired comparison of ``tests/test_trainer.py`` and
    :mod:`analysis.emi_recipe`."""
    from trainers.linear_eval import load_backbone

    trained, _ = load_backbone(checkpoint)
    random_acc = float(np.mean(probe_few_labels(random_init_backbone(checkpoint))))
    return random_acc, float(np.mean(probe_few_labels(trained)))


def probe_gain_row(
    objective: str,
    root: Path,
    *,
    quick: bool,
    seed: int,
    epochs: int | None = None,
    overrides: tuple[str, ...] = (),
) -> dict[str, float | int | bool]:
    """Train (or reuse, :func:`analysis.digits_runs.ensure_run`) one digits run and return its
    paired probe (:func:`few_label_probe_pair`): ``seed``, ``quick``, ``epochs`` (as trained),
    ``probe_random_init``, ``probe_trained`` and ``gain`` (points, trained minus random init)."""
    run_dir = digits_runs.ensure_run(
        objective, root, quick=quick, seed=seed, epochs=epochs, overrides=overrides
    )
    random_acc, trained_acc = few_label_probe_pair(run_dir / "last.pt")
    trained_epochs = json.loads((run_dir / digits_runs.STAMP_NAME).read_text())["epochs"]
    return {
        "seed": seed, "quick": quick, "epochs": int(trained_epochs),
        "probe_random_init": random_acc, "probe_trained": trained_acc,
        "gain": trained_acc - random_acc,
    }  # fmt: skip


def gain_summary(table: pd.DataFrame, by: list[str], margin: float = 5.0) -> pd.DataFrame:
    """Per group of ``by``: mean, min and max of ``gain`` over the rows (seeds), their count
    ``seeds`` and ``seeds_at_margin``, how many gains are >= ``margin`` points (the issue's
    5-point check applied to each seed)."""
    grouped = table.groupby(by, sort=False)["gain"]
    stats = grouped.agg(["mean", "min", "max"])
    stats["seeds"] = grouped.size()
    stats["seeds_at_margin"] = grouped.apply(lambda g: int((g >= margin).sum()))
    return stats


def gain_summary_text(table: pd.DataFrame, by: list[str], margin: float = 5.0) -> str:
    """:func:`gain_summary` as the printed table of the digits drivers (gains as signed points)."""
    stats = gain_summary(table, by, margin)
    return (
        f"probe gain over random init (points, 10 labels per class); seeds_at_margin: gains "
        f">= {margin:g}\n" + stats.to_string(float_format=lambda x: f"{x:+.2f}")
    )


def evaluate(backbone: torch.nn.Module) -> dict[str, float]:
    """Probe accuracies (%) of a frozen backbone on digits (protocol in the module docstring)."""
    from trainers.linear_eval import evaluate_backbone

    few = probe_few_labels(backbone)
    full = evaluate_backbone(backbone, "digits", seed=0)
    return {
        "probe_10_per_class": float(np.mean(few)),
        "probe_10_per_class_std": float(np.std(few, ddof=1)),
        "probe_all_labels": float(full.linear_top1),
        "knn_all_labels": float(full.knn_top1),
    }


def diagnose_run(checkpoint: Path, out_dir: Path, *, echo: bool = True) -> dict:
    """``python -m mitools.diagnose CHECKPOINT --out out_dir``; the projector report (dict)."""
    from mitools.diagnose import main as diagnose_main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = diagnose_main([str(checkpoint), "--out", str(out_dir)])
    if echo:
        print(buffer.getvalue(), end="")
    if code != 0:
        raise RuntimeError(f"mitools.diagnose {checkpoint} exited with {code}")
    report = json.loads((out_dir / "report.json").read_text())
    layers = report["layers"]
    return layers.get("projector") or next(iter(layers.values()))


def training_curves(run_dir: Path, objective: str) -> pd.DataFrame:
    """Per-epoch rows of the run's ``metrics.jsonl`` (``"kind": "epoch"``)."""
    from trainers.pretrain import read_metrics

    rows = [{"objective": objective, **{k: v for k, v in rec.items() if k != "kind"}}
            for rec in read_metrics(run_dir, kind="epoch")]  # fmt: skip
    return pd.DataFrame(rows)


def run(
    quick: bool,
    out: Path,
    seed: int = 0,
    objectives: tuple[str, ...] = OBJECTIVES,
    echo: bool = True,
    epochs: int | None = None,
    overrides: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Train (or reuse) each objective's digits run, evaluate, diagnose; returns digits_ssl.csv.

    The runs are always the digits configs as shipped (``quick=False`` runs of
    :mod:`analysis.digits_runs`, at its 30 epochs where the configs ship 60): they are the
    embedded default, already CPU-sized (about 1.5 CPU-minutes per objective), and the narrowed
    quick runs would not show what the default does. ``quick`` is recorded in the metadata only.
    ``epochs`` / ``overrides``: passed to :func:`analysis.digits_runs.ensure_runs` (tests use tiny
    runs).
    """
    out = Path(out)
    runs = digits_runs.ensure_runs(
        objectives, out / "runs", quick=False, seed=seed, epochs=epochs, overrides=overrides
    )
    from trainers.linear_eval import load_backbone

    rows, curves = [], []
    for objective in progress(objectives, desc="digits: evaluate + diagnose"):
        ckpt = runs[objective] / "last.pt"

        trained, state = load_backbone(ckpt)
        report = diagnose_run(ckpt, out / "diagnose" / objective, echo=echo)
        for encoder, backbone in (("random", random_init_backbone(ckpt)), ("trained", trained)):
            rows.append({
                "objective": objective, "encoder": encoder, "epochs": int(state["epoch"]),
                **evaluate(backbone),
                "projector_effective_rank": report["effective_rank"] if encoder == "trained"
                else np.nan,
                "projector_dim": report["dim"] if encoder == "trained" else np.nan,
                "verdict": report["verdict"] if encoder == "trained" else "",
            })  # fmt: skip
        curves.append(training_curves(runs[objective], objective))
    table = pd.DataFrame(rows)
    meta = {"quick": quick, "seed": seed, "objectives": list(objectives),
            "label_seeds": list(LABEL_SEEDS), "runs": {k: str(v) for k, v in runs.items()}}  # fmt: skip
    write_table(pd.concat(curves, ignore_index=True), out, CURVES_NAME, meta)
    write_table(table, out, NAME, meta)
    if echo:
        print(summary(table))
    return table


def summary(table: pd.DataFrame) -> str:
    """Readable random-vs-trained table."""
    lines = [f"{'objective':10s} {'encoder':8s} {'probe 10/class':>16s} {'probe all':>10s} "
             f"{'kNN all':>8s}  verdict"]  # fmt: skip
    for r in table.itertuples():
        lines.append(
            f"{r.objective:10s} {r.encoder:8s} {r.probe_10_per_class:9.2f} +- "
            f"{r.probe_10_per_class_std:4.2f} {r.probe_all_labels:10.2f} {r.knn_all_labels:8.2f}"
            f"  {r.verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        __doc__,
        prog="analysis.digits_ssl",
        quick_help="recorded in the metadata only: the runs are always the shipped digits configs "
        "at 30 epochs (about 3-4 CPU-minutes for emi and mio; finished runs are reused)",
    )
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                        choices=sorted(digits_runs.OBJECTIVES))  # fmt: skip
    args = parser.parse_args(argv)
    problem = common_problem(args)
    if problem:
        return fail(problem)
    run_and_record(
        run, quick=args.quick, out=Path(args.out), seed=args.seed, objectives=tuple(args.objectives)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
