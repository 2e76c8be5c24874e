"""Operators (kernel launches) and host syncs per training step, part by part, on any device.

    python -m benchmarks.step_ops [--case cifar10_emi] [--case cifar10_mio] [--out results/bench]

At CIFAR size on a GPU a ResNet-18 step is bound by the host: each ATen operator costs Python and
dispatcher time and one kernel launch, and each host read of a device value drains the launch
queue (``train_throughput`` measured the consequences on an H100). Operator counts do not depend
on the image size or the device, so this benchmark measures that budget on the CPU with tiny
inputs: for each part of the trainer's step it counts the operators that would run on CUDA
(launches, views excluded) and the host syncs, with the CUDA settings of the trainer (multi-tensor
optimiser, deferred loss read-back). The ``ceiling`` row is what ``train_throughput``'s ceiling
runs; every other row is pipeline overhead on top of it, and ``overhead_ratio`` is their sum over
the ceiling. The augmentation row is its eager count; the trainer replays it as one CUDA graph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from analysis._common import write_table
from mitools.data.augment import BatchAugment, preset_for
from mitools.data.datasets import get_spec
from mitools.models import EncoderSpec, MomentumEncoder, SSLModel
from mitools.op_trace import OpCounter
from trainers.config import load_config
from trainers.pretrain import (
    TwoViewModel,
    _device_terms,
    build_loss_from_config,
    build_optimizer_from_config,
    ssl_loss,
)

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"


def _one_step(cfg, model, net, target, loss_fn, opt, augment, raw) -> dict[str, OpCounter]:
    """One training step, each part counted on its own: the model's forward+backward (with a
    trivial loss, as the throughput ceiling) leaves the gradients the optimiser step uses, and its
    detached outputs feed the SSL loss."""
    parts: dict[str, OpCounter] = {}
    with OpCounter() as parts["augmentation (eager; 1 graph replay on CUDA)"]:
        x1, x2 = augment(raw)
    opt.zero_grad(set_to_none=True)
    targets = None
    with OpCounter() as parts["ceiling: model forward+backward"]:
        out = net(x1, x2)
        if target is not None:
            targets = (target(x1)[1], target(x2)[1])
        (out[4].square().mean() + out[5].square().mean()).backward()
    out = tuple(t.detach().requires_grad_(t.requires_grad) for t in out)
    with OpCounter() as parts["loss forward+backward"]:
        loss = ssl_loss(cfg, loss_fn, out, targets)
        loss.backward()
    with OpCounter() as parts["optimiser step"]:
        opt.step()
    if target is not None:
        with OpCounter() as parts["momentum-encoder update"]:
            target.update(model, 0.99)
    with OpCounter() as parts["loss terms kept on the device"]:
        _device_terms(loss_fn, loss)
    return parts


def step_ops(case: str, batch: int = 8, extra: list[str] | None = None) -> list[dict]:
    """One row per part of a training step of config ``case`` (counted at the third step, after
    lazy state such as EMA covariances and optimiser buffers exists)."""
    cfg = load_config(CONFIGS / f"{case}.yaml", [f"data.batch_size={batch}", *(extra or [])])
    spec = get_spec(cfg.data.name)
    torch.manual_seed(0)
    model = SSLModel(EncoderSpec.from_dict(cfg.model.encoder_spec_dict()))
    net = TwoViewModel(model).train()
    target = MomentumEncoder(model) if cfg.model.momentum_encoder else None
    loss_fn = build_loss_from_config(cfg)
    opt = build_optimizer_from_config(cfg, model)
    if hasattr(opt, "foreach"):  # LARS: CUDA's default
        opt.foreach = True
    for group in opt.param_groups:
        if "foreach" in group:  # torch optimisers: CUDA's default
            group["foreach"] = True
    augment = BatchAugment(preset_for(cfg.data.name))
    raw = torch.randint(0, 256, (batch, spec.channels, spec.image_size, spec.image_size),
                        dtype=torch.uint8)  # fmt: skip
    if spec.channels == 1:
        raw = raw.float() / 255
    for _ in range(3):
        parts = _one_step(cfg, model, net, target, loss_fn, opt, augment, raw)
    ceiling = parts["ceiling: model forward+backward"].launches
    overhead = sum(c.launches for k, c in parts.items() if not k.startswith(("ceiling", "aug")))
    rows = [
        {
            "case": case,
            "part": k,
            "launches": c.launches,
            "host_syncs": sum(c.syncs.values()),
            "sync_ops": dict(c.syncs),
        }  # fmt: skip
        for k, c in parts.items()
    ]
    rows.append({"case": case, "part": "overhead_ratio (non-augmentation overhead / ceiling)",
                 "launches": round(overhead / ceiling, 3), "host_syncs": None, "sync_ops": {}})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=None, help="config name (repeatable)")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    rows = []
    for case in args.case or ["cifar10_emi", "cifar10_mio"]:
        rows += step_ops(case, extra=args.set)
    df = pd.DataFrame(rows)
    df["sync_ops"] = df["sync_ops"].map(json.dumps)
    write_table(df, Path(args.out), "step_ops", {"cases": args.case, "set": args.set})
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
