"""Hessian spectra of SSL objectives along training, on the same frozen view pairs.

For every objective and chosen epoch: top-k and most negative eigenvalues (Lanczos), trace
(Hutch++ with its standard error) and the SLQ spectral density, each of the loss of ONE frozen
batch of augmented digits view pairs (the same pairs for every objective and epoch), BN in eval
mode (running statistics). The checkpoints are trainer runs (``trainers/pretrain.py``:
``epoch_XXXX.pt`` with ``model``, ``encoder_spec``, ``config``):

- default: the digits runs of :mod:`analysis.digits_runs` (made once under ``out / "runs"`` and
  reused: the collapse driver and the figures read the same folders), objectives
  :data:`OBJECTIVES` (quick: :data:`QUICK_OBJECTIVES`), epochs :func:`default_epochs` (quick: the
  first and the last; full: 1, 5, 10, 20, 30, ... and the last);
- ``runs={name: run folder or checkpoint}`` (CLI ``--runs name=PATH``): any trainer runs (e.g.
  CIFAR); for a folder every ``epoch_XXXX.pt`` found is analysed unless ``epochs`` is given, a
  checkpoint file is one epoch (the number in its ``epoch_XXXX.pt`` name, else its ``"epoch"``
  entry) whose metrics are read from the ``metrics.jsonl`` next to it. A folder without any
  ``epoch_XXXX.pt`` (a run of a shipped config: ``train.checkpoint_every_epochs: 0`` writes only
  ``last.pt``) falls back to its ``last.pt``, one epoch (its ``"epoch"`` entry); one line on
  stderr names the checkpoint used.

:func:`checkpoint_hessian` is the single-checkpoint version (a run folder's newest checkpoint, or
one file): :func:`mitools.hessian.hessian_summary` on the same frozen views, with the
checkpoint's own loss.

The loss is the checkpoint's own training loss (``config["loss"]``: name and params); a checkpoint
without a config falls back to the objective name with :data:`LOSS_CONFIG`. The Hessian is of
``loss(z1, z2)`` (projections; predictor outputs if the spec has a predictor) without any momentum
target, for the loss module in eval mode (no EMA / running-state updates). ``train_loss``,
``probe_top1`` and ``knn_top1`` are the trainer's mean training loss and its online monitoring
(linear-probe and kNN top-1 accuracy, %, on the held-out split) of that epoch: ``mean_loss``,
``probe_top1`` and ``knn_top1`` of the ``"kind": "epoch"`` line of ``metrics.jsonl``, NaN when
absent (no metrics file, or the run did not evaluate that epoch: ``eval.every_epochs``).

Bad input (a missing path, a folder without ``epoch_*.pt`` or ``last.pt``, a corrupt checkpoint,
non-finite weights, ...) makes the CLI print one ``error: ...`` line naming the path and exit 2
(``--debug`` shows the traceback), as :mod:`mitools.diagnose` does.

    python -m analysis.hessian_compare --quick
    python -m analysis.hessian_compare --runs emi=runs/digits_emi mio=runs/digits_mio
    python -m analysis.hessian_compare --runs emi=runs/digits_emi/epoch_0010.pt

The CLI prints the summary table in full (``DataFrame.to_string``, never elided when piped); the
tables themselves are ``OUT/hessian_compare.csv`` and ``OUT/hessian_density.csv``.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis import digits_runs
from analysis._common import base_parser, progress, write_table
from mitools.data import BatchAugment, build_dataset, get_preset
from mitools.diagnose import _check_finite_weights, _first_line  # the same one-line errors
from mitools.hessian import HessianOperator, freeze_views, spectral_density, top_eigenvalues, trace
from mitools.losses import LOSSES, build_loss
from mitools.models import EncoderSpec, SSLModel

__all__ = [
    "run",
    "checkpoint_hessian",
    "main",
    "default_epochs",
    "OBJECTIVES",
    "QUICK_OBJECTIVES",
    "NAME",
    "DENSITY_NAME",
]

NAME = "hessian_compare"
DENSITY_NAME = "hessian_density"
OBJECTIVES = ("emi", "mio", "simclr", "barlow_twins", "vicreg")
# EMI and MIO next to their nearest baselines: Barlow Twins (second-order statistics of the
# cross-view covariance) and SimCLR (contrastive over all pairs).
QUICK_OBJECTIVES = ("emi", "mio", "simclr", "barlow_twins")
FULL_EPOCH_MARKS = (1, 5, 10, 20, 30, 50, 100, 200)
# Per-epoch trainer metrics copied into the summary: column -> key of the "epoch" record.
EPOCH_METRICS = {"train_loss": "mean_loss", "probe_top1": "probe_top1", "knn_top1": "knn_top1"}
EXIT_BAD_INPUT = 2
PROG = "python -m analysis.hessian_compare"
LOSS_CONFIG: dict[str, dict[str, Any]] = {"emi": {"ridge": 1e-4}}


def _sizes(quick: bool) -> dict[str, Any]:
    """Hessian settings: frozen view pairs, Lanczos k / iterations, Hutch++ probes, SLQ runs x
    steps. Quick: seconds per checkpoint of the quick digits model (18.4k parameters); full:
    minutes per checkpoint of the full one."""
    if quick:
        return dict(views=48, k=2, n_probes=12, runs=1, steps=10, max_iter=16,
                    objectives=QUICK_OBJECTIVES)  # fmt: skip
    # Full digits CNN (118k parameters): one Hessian-vector product on 256 view pairs measured
    # 1.4 s on one thread of a busy 2-core machine (2.8 s on 512 pairs), so about 250 products
    # (100 Lanczos + 48 Hutch++ + 2 x 50 SLQ) per checkpoint.
    return dict(views=256, k=5, n_probes=48, runs=2, steps=50, max_iter=100,
                objectives=OBJECTIVES)  # fmt: skip


def default_epochs(available: list[int] | tuple[int, ...], quick: bool) -> list[int]:
    """The epochs analysed by default among the ``available`` checkpoints: quick, the first and
    the last; full, those in :data:`FULL_EPOCH_MARKS` and the last."""
    available = sorted(set(available))
    if not available:
        return []
    if quick:
        return sorted({available[0], available[-1]})
    return sorted({e for e in available if e in FULL_EPOCH_MARKS} | {available[-1]})


@functools.lru_cache(maxsize=2)
def _digits_images(split: str = "train") -> torch.Tensor:
    ds = build_dataset("digits", None, split)
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))]).float()


def _loss_closure(name: str, cfg: dict[str, Any] | None = None):
    """``loss_fn(model, (x1, x2))`` for :class:`HessianOperator`: the loss ``name`` with params
    ``cfg`` (default :data:`LOSS_CONFIG`), in eval mode."""
    loss = build_loss(name, **(cfg if cfg is not None else LOSS_CONFIG.get(name, {}))).eval()

    def loss_fn(model: SSLModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z1, z2 = model(batch[0])[1], model(batch[1])[1]
        if model.predictor is not None:
            z1, z2 = model.predict(z1), model.predict(z2)
        return loss(z1, z2)

    return loss_fn


def _checkpoint_loss(objective: str, state: dict[str, Any]):
    """The checkpoint's own training loss (its config), else the objective name's defaults."""
    loss_cfg = (state.get("config") or {}).get("loss")
    if isinstance(loss_cfg, dict) and loss_cfg.get("name") in LOSSES:
        return _loss_closure(loss_cfg["name"], dict(loss_cfg.get("params") or {}))
    if objective not in LOSSES:
        raise ValueError(
            f"{objective}: the checkpoint has no loss in its config and {objective!r} is not a "
            f"loss name (known: {', '.join(LOSSES)})"
        )
    return _loss_closure(objective)


def _epoch_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {column: value}}`` of :data:`EPOCH_METRICS` from a run folder's
    ``metrics.jsonl`` (a later record of the same epoch, e.g. after a resume, wins)."""
    from trainers.pretrain import read_metrics

    metrics: dict[int, dict[str, float]] = {}
    for rec in read_metrics(run_dir, kind="epoch"):
        if rec.get("epoch") is None:
            continue
        values = metrics.setdefault(int(rec["epoch"]), {})
        for column, key in EPOCH_METRICS.items():
            if isinstance(rec.get(key), (int, float)):
                values[column] = float(rec[key])
    return metrics


def _checkpoint_epoch(path: Path) -> int:
    """The epoch of one checkpoint file: the number in ``epoch_XXXX.pt``, else its ``"epoch"``."""
    if m := re.fullmatch(r"epoch_(\d+)", path.stem):
        return int(m.group(1))
    return _stored_epoch(path)[0]


def _stored_epoch(path: Path) -> tuple[int, int]:
    """``(epoch, batch_in_epoch)`` stored in a checkpoint (``batch_in_epoch``: batches of the
    next epoch already done, non-zero only for a checkpoint written on a signal)."""
    from mitools.checkpoint import load_checkpoint

    state = load_checkpoint(path, required=(), mmap=True)
    epoch = state.get("epoch")
    if not isinstance(epoch, int):
        raise ValueError(f"{path}: no epoch in the file name (epoch_XXXX.pt) or the checkpoint")
    batches = state.get("batch_in_epoch")
    return epoch, batches if isinstance(batches, int) else 0


def _run_checkpoints(path: Path) -> tuple[dict[int, Path], dict[int, dict[str, float]]]:
    """``{epoch: checkpoint}`` of a trainer run folder (its ``epoch_XXXX.pt``; none: its
    ``last.pt``, said in one line on stderr) or of one checkpoint file, and the run's per-epoch
    metrics (:func:`_epoch_metrics` of the folder, or of the folder holding the file). A missing
    path or a folder without checkpoints is a ValueError naming it."""
    path = Path(path)
    if path.is_file():
        return {_checkpoint_epoch(path): path}, _epoch_metrics(path.parent)
    if not path.exists():
        raise ValueError(f"{path}: no such run folder or checkpoint")
    if not path.is_dir():
        raise ValueError(f"{path}: not a run folder or checkpoint file")
    ckpts = {
        int(m.group(1)): p
        for p in path.glob("epoch_*.pt")
        if (m := re.fullmatch(r"epoch_(\d+)", p.stem))
    }
    if not ckpts:
        last = path / "last.pt"
        if not last.is_file():
            raise ValueError(f"{path}: no epoch_*.pt or last.pt checkpoints in this folder")
        epoch, batches = _stored_epoch(last)
        partial = f", plus {batches} batches of the next (written on a signal)" if batches else ""
        print(
            f"{path}: no epoch_*.pt checkpoints; using {last} (epoch {epoch}{partial})",
            file=sys.stderr,
        )
        ckpts = {epoch: last}
    return ckpts, _epoch_metrics(path)


def _load_model(path: Path) -> tuple[SSLModel, dict[str, Any]]:
    from mitools.checkpoint import load_checkpoint

    state = load_checkpoint(path, required=("model", "encoder_spec"))
    _check_finite_weights(path, state["model"])
    try:
        model = SSLModel(EncoderSpec.from_dict(state["encoder_spec"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: {_first_line(exc)}") from exc
    return model.eval(), state


def _analyse(model: SSLModel, loss_fn, views, sizes: dict[str, Any], seed: int):
    op = HessianOperator(model, loss_fn, views, bn_mode="eval")
    k = min(sizes["k"], op.n_params)
    eig = top_eigenvalues(op, k=k, which="both", tol=1e-6, max_iter=sizes["max_iter"], seed=seed,
                          return_eigenvectors=False)  # fmt: skip
    tr = trace(op, "hutch++", sizes["n_probes"], seed=seed)
    dens = spectral_density(op, runs=sizes["runs"], steps=sizes["steps"], seed=seed)
    row = {
        "n_params": op.n_params,
        "loss_at_views": op.loss,
        "min_eigenvalue": eig.smallest[0],
        "trace": tr.estimate,
        "trace_se": tr.std_error,
        "lanczos_iterations": eig.iterations,
        "lanczos_converged": eig.converged,
        "max_residual": float(eig.residual_norms.max()),
    }
    row.update({f"top{i + 1}": float(v) for i, v in enumerate(eig.largest)})
    return row, dens


def checkpoint_hessian(
    checkpoint: str | Path,
    objective: str | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    k: int | None = None,
    n_probes: int | None = None,
    max_iter: int | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The Hessian summary of one checkpoint, as :func:`run` sees it.

    ``checkpoint``: a checkpoint file, or a trainer run folder (its newest ``epoch_XXXX.pt``,
    else its ``last.pt``). The model is rebuilt from the checkpoint's ``encoder_spec`` and the
    loss is the checkpoint's own (``config["loss"]``; without one, the loss named ``objective``
    with :data:`LOSS_CONFIG`). The batch is the frozen digits view pairs of :func:`run` (same
    count for ``quick``, same ``seed``), BN in eval mode. ``k`` (Lanczos eigenvalues at each end),
    ``n_probes`` (Hutch++) and ``max_iter`` (Lanczos) default to :func:`run`'s sizes for
    ``quick``; ``threads`` as in :func:`run`.

    Returns :func:`mitools.hessian.hessian_summary` (what ``mitools.diagnose --hessian``
    reports: top-k and most negative eigenvalues, Hutch++ trace and its standard error, ...)
    with ``checkpoint`` (the file used) and ``epoch`` added. Bad input is a ValueError naming
    the path.
    """
    from mitools.hessian import hessian_summary

    ckpts, _ = _run_checkpoints(Path(checkpoint))
    epoch = max(ckpts)
    path = ckpts[epoch]
    model, state = _load_model(path)
    if objective is None and not isinstance((state.get("config") or {}).get("loss"), dict):
        raise ValueError(f"{path}: the checkpoint has no loss in its config; pass objective")
    loss_fn = _checkpoint_loss(objective or str(path), state)
    sizes = _sizes(quick)
    with digits_runs.torch_threads(threads):
        views = freeze_views(
            _digits_images(), sizes["views"], BatchAugment(get_preset("digits")), seed
        )
        try:
            result = hessian_summary(
                model,
                loss_fn,
                views,
                k=sizes["k"] if k is None else k,
                n_probes=sizes["n_probes"] if n_probes is None else n_probes,
                max_iter=sizes["max_iter"] if max_iter is None else max_iter,
                seed=seed,
            )
        except (ValueError, RuntimeError) as exc:  # e.g. a collapsed model's non-finite loss
            raise ValueError(f"{path}: {_first_line(exc)}") from exc
    return {"checkpoint": str(path), "epoch": epoch, **result}


def run(
    quick: bool,
    out: Path,
    seed: int = 0,
    runs: dict[str, str | Path] | None = None,
    objectives: tuple[str, ...] | None = None,
    returns: str = "summary",
    epochs: tuple[int, ...] | None = None,
    run_root: Path | None = None,
    threads: int | None = 1,
) -> pd.DataFrame:
    """Write ``hessian_compare.csv`` (one row per objective x epoch) and ``hessian_density.csv``
    (objective, epoch, x, density); return the one named by ``returns`` ("summary"/"density").

    ``runs``: ``{name: trainer run folder or checkpoint file}``; None: the digits runs of ``objectives`` made or
    reused by :func:`analysis.digits_runs.ensure_runs` under ``run_root`` (default
    ``out / "runs"``). ``epochs``: the epochs to analyse (each must have a checkpoint); None:
    :func:`default_epochs` for the digits runs, every checkpoint for ``runs``.
    ``threads``: torch CPU threads for training and the Hessians, restored after (None: leave
    as is). On a busy 2-core machine the quick Hessian of one checkpoint (18.4k parameters)
    measured 3-5 s on one thread and 20-70 s on two, hence the default 1.
    """
    with digits_runs.torch_threads(threads):
        return _run(quick, out, seed, runs, objectives, returns, epochs, run_root)


def _run(
    quick: bool,
    out: Path,
    seed: int,
    runs: dict[str, str | Path] | None,
    objectives: tuple[str, ...] | None,
    returns: str,
    epochs: tuple[int, ...] | None,
    run_root: Path | None,
) -> pd.DataFrame:
    if returns not in ("summary", "density"):
        raise ValueError(f"returns must be 'summary' or 'density', got {returns!r}")
    sizes = _sizes(quick)
    out = Path(out)
    if runs:
        folders = {name: Path(folder) for name, folder in runs.items()}
        if objectives:
            unknown = [name for name in objectives if name not in folders]
            if unknown:
                raise ValueError(f"objectives {unknown} not among the runs {list(folders)}")
            folders = {name: folders[name] for name in objectives}
    else:
        objectives = tuple(objectives or sizes["objectives"])
        root = Path(run_root) if run_root is not None else out / "runs"
        folders = digits_runs.ensure_runs(objectives, root, quick=quick, seed=seed, threads=None)
    jobs: list[tuple[str, int, Path, dict[str, float]]] = []
    for name, folder in folders.items():
        ckpts, metrics = _run_checkpoints(folder)
        if epochs is not None:
            chosen = sorted(set(epochs))
            missing = [e for e in chosen if e not in ckpts]
            if missing:
                raise ValueError(
                    f"{name}: no checkpoint for epoch(s) {missing} in {folder} "
                    f"(available: {sorted(ckpts)})"
                )
        else:
            chosen = sorted(ckpts) if runs else default_epochs(list(ckpts), quick)
        nan = dict.fromkeys(EPOCH_METRICS, math.nan)
        jobs += [(name, ep, ckpts[ep], {**nan, **metrics.get(ep, {})}) for ep in chosen]
    for _, _, path, _ in jobs:  # bad checkpoints fail here, before any Hessian is computed
        _load_model(path)
    views = freeze_views(_digits_images(), sizes["views"], BatchAugment(get_preset("digits")), seed)
    rows, dens_rows = [], []
    for name, ep, path, epoch_metrics in progress(jobs, desc="hessian"):
        model, state = _load_model(path)
        try:
            row, dens = _analyse(model, _checkpoint_loss(name, state), views, sizes, seed)
        except (ValueError, RuntimeError) as exc:  # e.g. a collapsed model's non-finite loss
            raise ValueError(f"{path}: {_first_line(exc)}") from exc
        rows.append({"objective": name, "epoch": ep, **epoch_metrics, **row})
        dens_rows += [{"objective": name, "epoch": ep, "x": x, "density": d}
                      for x, d in zip(dens.grid, dens.density, strict=True)]  # fmt: skip
    df = pd.DataFrame(rows)
    dens_df = pd.DataFrame(dens_rows)
    meta = {"quick": quick, "seed": seed, "sizes": sizes, "objectives": list(folders),
            "runs": {k: str(v) for k, v in folders.items()},
            "source": "runs" if runs else "analysis.digits_runs", "bn_mode": "eval",
            "views": "freeze_views(digits train, n, BatchAugment(digits), seed)"}  # fmt: skip
    write_table(df, out, NAME, meta)
    write_table(dens_df, out, DENSITY_NAME, meta)
    return dens_df if returns == "density" else df


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.prog = PROG
    parser.add_argument(
        "--runs",
        nargs="*",
        default=None,
        help="NAME=PATH: a trainer run folder or one epoch_XXXX.pt checkpoint",
    )
    parser.add_argument("--objectives", nargs="*", default=None)
    parser.add_argument(
        "--epochs",
        nargs="*",
        type=int,
        default=None,
        help="epochs to analyse, each with a checkpoint (default: with --runs, every checkpoint "
        "of each folder; without, the first and last epoch with --quick, else epochs "
        f"{', '.join(map(str, FULL_EPOCH_MARKS))} and the last, where present)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on bad input")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError, EOFError, RuntimeError, KeyError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _main(args) -> int:
    runs = None
    if args.runs:
        runs = {}
        for item in args.runs:
            if "=" not in item:
                raise ValueError(f"--runs expects NAME=PATH, got {item!r}")
            k, v = item.split("=", 1)
            runs[k] = v
    df = run(args.quick, Path(args.out), args.seed, runs=runs,
             objectives=tuple(args.objectives) if args.objectives else None,
             epochs=tuple(args.epochs) if args.epochs else None)  # fmt: skip
    cols = ["objective", "epoch", "train_loss", "probe_top1", "top1", "min_eigenvalue", "trace"]
    print(df[cols].to_string(index=False))  # in full: pandas elides wide/long frames otherwise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
