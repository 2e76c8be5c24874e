"""Hessian spectra of SSL objectives along training, on the same frozen view pairs.

For every objective and chosen epoch: top-k and most negative eigenvalues (Lanczos), trace
(Hutch++ with its standard error) and the SLQ spectral density, each of the loss of ONE frozen
batch of augmented digits view pairs (the same pairs for every objective and epoch), BN in eval
mode (running statistics). Two sources of checkpoints:

- ``runs``: ``{objective: run folder}`` written by ``trainers/pretrain.py`` (``epoch_XXXX.pt``
  checkpoints with ``model``, ``encoder_spec``; every checkpoint found is analysed); training
  loss per epoch from the ``"kind": "epoch"`` lines of ``metrics.jsonl`` that carry ``"loss"``
  (NaN otherwise). The objective name picks the loss (default config, :data:`LOSS_CONFIG`).
- default (no ``runs``): tiny digits models trained here per objective with a plain Adam loop
  (``mitools.models`` / ``losses`` / ``data``), a state dict saved per epoch under
  ``out/hessian_compare_ckpt/``. The trainer was not usable when this driver was written.

The Hessian is of ``loss(z1, z2)`` (projections; predictor outputs if the spec has a predictor)
without any momentum target, for the loss module in eval mode (no EMA / running-state updates).

    python -m analysis.hessian_compare --quick
    python -m analysis.hessian_compare --runs emi=runs/digits_emi mio=runs/digits_mio
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis._common import base_parser, progress, write_table
from mitools.data import BatchAugment, build_dataset, get_preset
from mitools.hessian import HessianOperator, freeze_views, spectral_density, top_eigenvalues, trace
from mitools.losses import build_loss
from mitools.models import EncoderSpec, SSLModel

__all__ = ["run", "main", "OBJECTIVES", "NAME", "DENSITY_NAME"]

NAME = "hessian_compare"
DENSITY_NAME = "hessian_density"
OBJECTIVES = ("emi", "mio", "simclr", "barlow_twins", "vicreg")
LOSS_CONFIG: dict[str, dict[str, Any]] = {"emi": {"ridge": 1e-4}}


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(widths=[4, 8], proj=[8], epochs=2, eval_epochs=[0, 1, 2], views=48,
                    k=2, n_probes=12, runs=1, steps=10, batch=128, max_iter=16,
                    objectives=OBJECTIVES[:4])  # fmt: skip
    return dict(widths=[16, 32, 32], proj=[32, 16], epochs=20, eval_epochs=[0, 1, 2, 5, 10, 20],
                views=512, k=5, n_probes=99, runs=4, steps=80, batch=256, max_iter=200,
                objectives=OBJECTIVES)  # fmt: skip


@functools.lru_cache(maxsize=2)
def _digits_images(split: str = "train") -> torch.Tensor:
    ds = build_dataset("digits", None, split)
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))]).float()


def _loss_closure(name: str, cfg: dict[str, Any] | None = None):
    loss = build_loss(name, **(cfg if cfg is not None else LOSS_CONFIG.get(name, {}))).eval()

    def loss_fn(model: SSLModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z1, z2 = model(batch[0])[1], model(batch[1])[1]
        if model.predictor is not None:
            z1, z2 = model.predict(z1), model.predict(z2)
        return loss(z1, z2)

    return loss_fn


def quick_train(
    objective: str, sizes: dict[str, Any], ckpt_dir: Path, seed: int
) -> tuple[list[Path], list[float]]:
    """Train a tiny digits model with Adam; save the state dict at epochs 0..E; return the paths
    and the mean training loss per epoch (NaN for epoch 0)."""
    torch.manual_seed(seed)
    spec = EncoderSpec(arch="small_cnn", in_channels=1, widths=sizes["widths"],
                       projector_dims=sizes["proj"], projector_bn=False, projector_last_bn=False)  # fmt: skip
    model = SSLModel(spec)
    images = _digits_images()
    augment = BatchAugment(get_preset("digits"))
    train_loss = build_loss(objective, **LOSS_CONFIG.get(objective, {}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    paths, losses = [], [float("nan")]

    def save(epoch: int) -> None:
        path = ckpt_dir / f"{objective}_epoch_{epoch:04d}.pt"
        torch.save(
            {"model": model.state_dict(), "encoder_spec": spec.to_dict(), "epoch": epoch}, path
        )
        paths.append(path)

    save(0)
    for epoch in range(1, sizes["epochs"] + 1):
        model.train()
        perm = torch.randperm(len(images), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(perm) - sizes["batch"] + 1, sizes["batch"]):
            x1, x2 = augment(images[perm[i : i + sizes["batch"]]], generator=g)
            loss = train_loss(model(x1)[1], model(x2)[1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        losses.append(total / max(count, 1))
        save(epoch)
    return paths, losses


def _run_checkpoints(path: Path) -> tuple[None, dict[int, Path], dict[int, float]]:
    ckpts = {
        int(m.group(1)): p for p in path.glob("epoch_*.pt") if (m := re.search(r"(\d+)", p.stem))
    }
    name = None
    losses: dict[int, float] = {}
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "epoch" and "loss" in rec:
                losses[int(rec["epoch"])] = float(rec["loss"])
    return name, ckpts, losses


def _load_model(path: Path) -> tuple[SSLModel, dict[str, Any]]:
    from mitools.checkpoint import load_checkpoint

    state = load_checkpoint(path, required=("model", "encoder_spec"))
    model = SSLModel(EncoderSpec.from_dict(state["encoder_spec"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def _analyse(model: SSLModel, loss_fn, views, sizes: dict[str, Any], seed: int):
    op = HessianOperator(model, loss_fn, views, bn_mode="eval")
    k = min(sizes["k"], op.n_params)
    eig = top_eigenvalues(op, k=k, which="both", tol=1e-6, max_iter=sizes["max_iter"], seed=seed,
                          return_eigenvectors=False)  # fmt: skip
    tr = trace(op, "hutch++", sizes["n_probes"], seed=seed)
    dens = spectral_density(op, runs=sizes["runs"], steps=sizes["steps"], seed=seed)
    row = {"n_params": op.n_params, "loss_at_views": op.loss, "min_eigenvalue": eig.smallest[0],
           "trace": tr.estimate, "trace_se": tr.std_error, "lanczos_iterations": eig.iterations,
           "lanczos_converged": eig.converged, "max_residual": float(eig.residual_norms.max())}  # fmt: skip
    row.update({f"top{i + 1}": float(v) for i, v in enumerate(eig.largest)})
    return row, dens


def run(
    quick: bool,
    out: Path,
    seed: int = 0,
    runs: dict[str, str | Path] | None = None,
    objectives: tuple[str, ...] | None = None,
    returns: str = "summary",
) -> pd.DataFrame:
    """Write ``hessian_compare.csv`` (one row per objective x epoch) and ``hessian_density.csv``
    (objective, epoch, x, density); return the one named by ``returns`` ("summary"/"density")."""
    sizes = _sizes(quick)
    out = Path(out)
    objectives = tuple(objectives or (runs.keys() if runs else sizes["objectives"]))
    views = freeze_views(_digits_images(), sizes["views"], BatchAugment(get_preset("digits")), seed)
    jobs: list[tuple[str, int, Path, float]] = []
    if runs:
        for name, folder in runs.items():
            _, ckpts, losses = _run_checkpoints(Path(folder))
            if not ckpts:
                raise ValueError(f"no epoch_*.pt checkpoints in {folder}")
            for ep in sorted(ckpts):
                jobs.append((name, ep, ckpts[ep], losses.get(ep, float("nan"))))
    else:
        for name in progress(objectives, desc="train"):
            paths, losses = quick_train(name, sizes, out / f"{NAME}_ckpt", seed)
            jobs += [(name, ep, paths[ep], losses[ep]) for ep in sizes["eval_epochs"]]
    rows, dens_rows = [], []
    for name, ep, path, train_loss in progress(jobs, desc="hessian"):
        model, _ = _load_model(path)
        row, dens = _analyse(model, _loss_closure(name), views, sizes, seed)
        rows.append({"objective": name, "epoch": ep, "train_loss": train_loss, **row})
        dens_rows += [{"objective": name, "epoch": ep, "x": x, "density": d}
                      for x, d in zip(dens.grid, dens.density, strict=True)]  # fmt: skip
    df = pd.DataFrame(rows)
    dens_df = pd.DataFrame(dens_rows)
    meta = {"quick": quick, "seed": seed, "sizes": sizes, "objectives": list(objectives),
            "source": "runs" if runs else "in-process Adam training", "bn_mode": "eval",
            "views": "freeze_views(digits train, n, BatchAugment(digits), seed)"}  # fmt: skip
    write_table(df, out, NAME, meta)
    write_table(dens_df, out, DENSITY_NAME, meta)
    return dens_df if returns == "density" else df


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=None, help="NAME=RUN_DIR (trainer folders)")
    parser.add_argument("--objectives", nargs="*", default=None)
    args = parser.parse_args(argv)
    runs = None
    if args.runs:
        runs = {}
        for item in args.runs:
            if "=" not in item:
                raise SystemExit(f"--runs expects NAME=RUN_DIR, got {item!r}")
            k, v = item.split("=", 1)
            runs[k] = v
    df = run(args.quick, Path(args.out), args.seed, runs=runs,
             objectives=tuple(args.objectives) if args.objectives else None)  # fmt: skip
    with pd.option_context("display.width", 160):
        print(df[["objective", "epoch", "train_loss", "top1", "min_eigenvalue", "trace"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
