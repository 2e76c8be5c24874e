"""DDP on CPU (gloo): 2 processes with half batches give the single-process full-batch gradients.

Two processes are spawned with ``torch.multiprocessing`` on 127.0.0.1 and a free port. Each
wraps the trainer's ``TwoViewModel`` in DistributedDataParallel, builds the loss with the
trainer's ``build_loss_from_config`` (which turns on ``gather_distributed`` for batch-coupled
losses) and back-propagates the trainer's ``ssl_loss`` on its half of a fixed batch. The truth
is one process, no DDP, whole batch.

BatchNorm: PyTorch's SyncBatchNorm runs on CUDA only, so on CPU per-rank BN statistics differ
from full-batch ones by construction; the gradient check therefore replaces BN layers by
identities (it tests the gather + DDP-averaging path, which is the trainer's responsibility).
The same processes then run two steps of the real training loop under DDP as a smoke test.
"""

from __future__ import annotations

import faulthandler
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainers.config import load_config
from trainers.pretrain import TwoViewModel, build_loss_from_config, ssl_loss, train

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
LOSSES = ("emi", "mio", "byol", "vicreg")
BATCH = 32


def _strip_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_bn(child)


def _first_step_grads(
    loss_name: str, world: int, rank: int, gather: bool = True
) -> dict[str, torch.Tensor]:
    from mitools.models import EncoderSpec, SSLModel

    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        [f"loss.name={loss_name}", "loss.params={}", "model.widths=[8,16]",
         "model.projector_dims=[16,8]", f"loss.gather_distributed={str(gather).lower()}"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = SSLModel(EncoderSpec.from_dict(cfg.model.encoder_spec_dict())).double()
    _strip_bn(model)
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(BATCH, 1, 8, 8, generator=g, dtype=torch.float64)
    x2 = (x1 + 0.1 * torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64)).clamp(0, 1)
    net: nn.Module = TwoViewModel(model)
    part = slice(None)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net)
        per = BATCH // world
        part = slice(rank * per, (rank + 1) * per)
    loss_fn = build_loss_from_config(cfg, world)
    loss = ssl_loss(cfg, loss_fn, net(x1[part], x2[part]), None)
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, out_dir: str) -> None:
    faulthandler.enable(all_threads=True)  # a native abort prints the Python stacks
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MITOOLS_NO_PROGRESS="1"
    )
    torch.set_num_threads(1)
    # A file rendezvous, not a TCP port picked in advance: another process may take a "free" port
    # before rank 0 binds it. The trainer finds the process group initialised and joins it.
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world
    )
    try:
        grads = {name: _first_step_grads(name, world, rank) for name in LOSSES}
        # sensitivity: without the gather, the batch-coupled MIO loss sees half batches
        grads["mio_no_gather"] = _first_step_grads("mio", world, rank, gather=False)
        torch.save(grads, Path(out_dir) / f"grads_rank{rank}.pt")
        cfg = load_config(
            CONFIGS / "digits_mio.yaml",
            ["train.epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=32",
             "model.widths=[8,16]", "model.projector_dims=[16,8]", "eval.every_epochs=1",
             "eval.max_samples=200", "eval.probe_steps=10", "train.log_every_steps=1",
             f"train.run_dir={out_dir}/run"],
        )  # fmt: skip
        summary = train(cfg)
        torch.save(
            {"step": summary["step"], "epoch": summary["epoch"]},
            Path(out_dir) / f"summary{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_full_batch(tmp_path):
    world = 2
    ctx = mp.start_processes(
        _worker, args=(world, str(tmp_path)), nprocs=world, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.time() + 300
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("DDP workers did not finish in 300 s")
    for name in LOSSES:
        truth = _first_step_grads(name, 1, 0)
        for rank in range(world):
            got = torch.load(tmp_path / f"grads_rank{rank}.pt", weights_only=True)[name]
            assert got.keys() == truth.keys()
            for k in truth:
                torch.testing.assert_close(
                    got[k], truth[k], rtol=1e-9, atol=1e-12, msg=f"{name} {k}"
                )
        assert any(float(v.abs().max()) > 0 for v in truth.values()), name
    truth = _first_step_grads("mio", 1, 0)
    no_gather = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)["mio_no_gather"]
    assert max(float((no_gather[k] - truth[k]).abs().max()) for k in truth) > 1e-6
    # the real loop ran 2 steps on both ranks; rank 0 wrote a checkpoint with both RNG states
    for rank in range(world):
        assert torch.load(tmp_path / f"summary{rank}.pt", weights_only=True) == {
            "step": 2,
            "epoch": 1,
        }
    st = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert st["world_size"] == 2 and len(st["rng_per_rank"]) == 2
    assert "knn_top1" in (tmp_path / "run" / "metrics.jsonl").read_text()
