"""DDP on CPU (gloo): 2 processes with half batches give the single-process full-batch gradients.

Two processes are spawned with ``torch.multiprocessing`` and meet through a rendezvous file in
the test's own ``tmp_path`` (no TCP port, so nothing to collide with under pytest-xdist). Each
wraps the trainer's ``TwoViewModel`` in DistributedDataParallel, builds the loss with the
trainer's ``build_loss_from_config`` (which turns on ``gather_distributed`` for batch-coupled
losses) and back-propagates the trainer's ``ssl_loss`` on its half of a fixed batch. The truth
is one process, no DDP, whole batch.

BatchNorm: per-rank BN statistics differ from full-batch ones by construction, so the first
check replaces BN layers by identities (it tests the gather + DDP-averaging path). The same
processes then run two steps of the real training loop under DDP as a smoke test, recording
the index batches the trainer's sampler gave each rank: the ranks' shares of a step are disjoint
and together are the one-process batch of that step (the premise of the gradient check). The
sampler on its own is checked for 1, 2 and 3 ranks, over epochs and mid-epoch resume offsets.

SyncBatchNorm (``model.sync_batchnorm``) is what makes BN full-batch under DDP, but PyTorch has
its kernels on CUDA only. The second test registers CPU kernels for the five ``aten`` ops that
``SyncBatchNorm`` calls (``batch_norm_stats``, ``batch_norm_gather_stats_with_counts``,
``batch_norm_elemt``, ``batch_norm_backward_reduce``, ``batch_norm_backward_elemt``; written
from their math, see ``_CpuSyncBatchNorm``) and lifts its GPU-only device check, inside the
worker processes only (and DDP's matching refusal). The truth is independent of those kernels: one process, plain
``nn.BatchNorm``, whole batch. What it checks is the trainer's side, which a GPU run would share:
the conversion in ``build_online_model`` before the DDP wrap, gradients and BN running statistics
equal to the full batch's, and a real training loop with a momentum target (its own SyncBN
forward) and rank-0-only online evaluation that does not deadlock. PyTorch's CUDA kernels and
NCCL are not exercised here.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainers.config import load_config
from trainers.pretrain import (
    EpochBatchSampler,
    TwoViewModel,
    build_loss_from_config,
    build_online_model,
    ssl_loss,
    train,
)

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
    loss_name: str, world: int, rank: int, gather: bool = True, batchnorm: str = "strip"
) -> dict[str, torch.Tensor]:
    """First-step gradients (and, with BN kept, BN buffers after the step's forward) of rank
    ``rank`` of ``world`` on its slice of a fixed float64 batch. ``batchnorm``: ``"strip"``
    (identities), ``"sync"`` (``model.sync_batchnorm=true``: SyncBatchNorm when world > 1),
    ``"local"`` (per-rank BatchNorm)."""
    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        [f"loss.name={loss_name}", "loss.params={}", "model.widths=[8,16]",
         "model.projector_dims=[16,8]", f"loss.gather_distributed={str(gather).lower()}",
         f"model.sync_batchnorm={str(batchnorm == 'sync').lower()}"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_online_model(cfg, torch.device("cpu"), world).double()
    if batchnorm == "strip":
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
    out = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    if batchnorm != "strip":
        out.update({k: b.detach().clone() for k, b in model.named_buffers() if "running" in k})
    return out


class _CpuSyncBatchNorm:
    """CPU kernels for the ``aten`` ops behind ``nn.SyncBatchNorm`` (PyTorch has CUDA ones only).

    Conventions as in PyTorch's CUDA kernels: statistics reduce over every dimension but the
    channel one (dim 1); ``invstd = 1 / sqrt(var + eps)`` with the biased variance; the global
    statistics pool per-rank means and variances weighted by their counts; the running variance
    takes the unbiased global variance. Test-only: the math is checked end to end against
    plain ``nn.BatchNorm`` on the whole batch, which does not use these kernels.
    """

    _library = None

    @staticmethod
    def _channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (like.dim() - 2)))

    @staticmethod
    def _dims(x: torch.Tensor) -> list[int]:
        return [d for d in range(x.dim()) if d != 1]

    @classmethod
    def stats(cls, x, eps):
        var, mean = torch.var_mean(x, dim=cls._dims(x), correction=0)
        return mean, (var + eps).rsqrt()

    @staticmethod
    def gather_stats(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):
        n = counts.to(mean_all.dtype).view(-1, 1)
        total = n.sum()
        mean = (n * mean_all).sum(0) / total
        var = (n * (invstd_all.pow(-2) - eps + (mean_all - mean) ** 2)).sum(0) / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        if running_var is not None:
            unbiased = var * total / (total - 1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        return mean, (var + eps).rsqrt()

    @classmethod
    def elemt(cls, x, weight, bias, mean, invstd, eps):
        y = (x - cls._channel(mean, x)) * cls._channel(invstd, x)
        if weight is not None:
            y = y * cls._channel(weight, x)
        return y if bias is None else y + cls._channel(bias, x)

    @classmethod
    def backward_reduce(cls, dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
        dims = cls._dims(x)
        sum_dy = dy.sum(dims)
        sum_dy_xmu = (dy * (x - cls._channel(mean, x))).sum(dims)
        return sum_dy, sum_dy_xmu, sum_dy_xmu * invstd, sum_dy

    @classmethod
    def backward_elemt(cls, dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
        total = count.sum().to(x.dtype)
        scale = invstd if weight is None else invstd * weight
        xmu_coef = invstd * invstd * sum_dy_xmu / total
        c = cls._channel
        return (dy - c(sum_dy / total, x) - (x - c(mean, x)) * c(xmu_coef, x)) * c(scale, x)

    @classmethod
    def enable(cls) -> None:
        """Register the kernels and lift SyncBatchNorm's device check, for this process."""
        if cls._library is not None:
            return
        lib = torch.library.Library("aten", "IMPL")
        for op, fn in [
            ("batch_norm_stats", cls.stats),
            ("batch_norm_gather_stats_with_counts", cls.gather_stats),
            ("batch_norm_elemt", cls.elemt),
            ("batch_norm_backward_reduce", cls.backward_reduce),
            ("batch_norm_backward_elemt", cls.backward_elemt),
        ]:
            lib.impl(op, fn, "CPU")
        cls._library = lib
        forward = nn.SyncBatchNorm.forward

        def forward_on_cpu(self, x):
            # SyncBatchNorm accepts CUDA/XPU/HPU or the "privateuse1" backend's device type
            with mock.patch.object(torch._C, "_get_privateuse1_backend_name", lambda: "cpu"):
                return forward(self, x)

        nn.SyncBatchNorm.forward = forward_on_cpu
        # DDP's wrap refuses SyncBatchNorm on CPU modules; that check is all this method does
        nn.parallel.DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, m: None


# The workers' wall-clock limit (both jobs). Measured on the 2-core dev machine, the sync job's
# workers take about 20 s alone; 140 s in each of two concurrent `pytest -n 2` runs of the three
# distributed-test files with 4 busy loops beside them (load ~11); 332 s in each of two concurrent
# runs of this test with 24 busy loops (load ~28), where the former 300 s limit failed the test and
# sent its workers SIGTERM. The time grows about linearly with the load, so 1200 s holds to a load
# of about 100 and stays below gloo's 30-minute collective timeout: a hang fails here, with the
# workers' Python stacks.
WORKERS_TIMEOUT_S = 1200


def _worker(rank: int, world: int, out_dir: str, job: str) -> None:
    faulthandler.enable(all_threads=True)  # a native abort prints the Python stacks
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # and so does the parent's timeout
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MITOOLS_NO_PROGRESS="1"
    )
    torch.set_num_threads(1)
    if job == "sync":
        _CpuSyncBatchNorm.enable()
    # A file rendezvous, not a TCP port picked in advance: another process may take a "free" port
    # before rank 0 binds it. The trainer finds the process group initialised and joins it.
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world
    )
    try:
        {"plain": _plain_job, "sync": _sync_job}[job](rank, world, out_dir)
    finally:
        dist.destroy_process_group()


def _run_workers(job: str, world: int, out_dir: Path) -> None:
    ctx = mp.start_processes(
        _worker, args=(world, str(out_dir), job), nprocs=world, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + WORKERS_TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            _stop_workers(ctx.processes)
            pytest.fail(
                f"DDP workers ({job}) did not finish in {WORKERS_TIMEOUT_S} s (deadlock?); "
                "their Python stacks are in the captured stderr"
            )


def _stop_workers(processes) -> None:
    """Each live worker's Python stacks to stderr, then SIGKILL and join. Not SIGTERM: inside
    ``train`` it only asks for a checkpoint at the next step, and a worker left running would
    load the machine for the tests after this one."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(2)  # one at a time, so that their stacks do not interleave
    for p in alive:
        p.kill()
    for p in processes:
        p.join()


def _two_step_config(name: str, out_dir: str, *extra: str):
    """A real training run of 2 steps (one epoch) with online evaluation, tiny model."""
    return load_config(
        CONFIGS / name,
        ["train.epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=32",
         "model.widths=[8,16]", "model.projector_dims=[16,8]", "eval.every_epochs=1",
         "eval.max_samples=200", "eval.probe_steps=10", "train.device=cpu",
         f"train.run_dir={out_dir}/run", *extra],
    )  # fmt: skip


class _RecordingSampler(EpochBatchSampler):
    """The trainer's sampler, keeping each epoch's index matrix and its arguments."""

    seen: list[dict] = []

    def index_matrix(self) -> torch.Tensor:
        rows = super().index_matrix()
        _RecordingSampler.seen.append(
            dict(n=self.n, batch_size=self.batch_size, seed=self.seed, rank=self.rank,
                 world=self.world, epoch=self.epoch, start_batch=self.start_batch, rows=rows)
        )  # fmt: skip
        return rows


def _plain_job(rank: int, world: int, out_dir: str) -> None:
    grads = {name: _first_step_grads(name, world, rank) for name in LOSSES}
    # sensitivity: without the gather, the batch-coupled MIO loss sees half batches
    grads["mio_no_gather"] = _first_step_grads("mio", world, rank, gather=False)
    torch.save(grads, Path(out_dir) / f"grads_rank{rank}.pt")
    with mock.patch("trainers.pretrain.EpochBatchSampler", _RecordingSampler):
        summary = train(_two_step_config("digits_mio.yaml", out_dir, "train.log_every_steps=1"))
    torch.save(
        {"step": summary["step"], "epoch": summary["epoch"], "sampled": _RecordingSampler.seen},
        Path(out_dir) / f"summary{rank}.pt",
    )


def _assert_every_rank_equals(
    out_dir: Path, world: int, name: str, truth: dict[str, torch.Tensor]
) -> None:
    for rank in range(world):
        got = torch.load(out_dir / f"grads_rank{rank}.pt", weights_only=True)[name]
        assert got.keys() == truth.keys()
        for k in truth:
            torch.testing.assert_close(got[k], truth[k], rtol=1e-9, atol=1e-12, msg=f"{name} {k}")


def test_two_gloo_processes_match_one_process_full_batch(tmp_path):
    world = 2
    _run_workers("plain", world, tmp_path)
    for name in LOSSES:
        truth = _first_step_grads(name, 1, 0)
        _assert_every_rank_equals(tmp_path, world, name, truth)
        assert any(float(v.abs().max()) > 0 for v in truth.values()), name
    truth = _first_step_grads("mio", 1, 0)
    no_gather = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)["mio_no_gather"]
    assert max(float((no_gather[k] - truth[k]).abs().max()) for k in truth) > 1e-6
    # the real loop ran 2 steps on both ranks, each on its half of the global batch of 32
    summaries = [torch.load(tmp_path / f"summary{r}.pt", weights_only=True) for r in range(world)]
    for rank, summary in enumerate(summaries):
        assert (summary["step"], summary["epoch"]) == (2, 1)
        (sampled,) = summary["sampled"]  # one epoch, one index matrix
        assert (sampled["rank"], sampled["world"], sampled["batch_size"]) == (rank, world, 16)
    # the trainer's ranks got disjoint halves of the one-process batch of each step (one seed)
    first = summaries[0]["sampled"][0]
    one = EpochBatchSampler(first["n"], 32, first["seed"])
    one.set_epoch(first["epoch"], first["start_batch"])
    for step, batch in enumerate(one.index_matrix()[:2].tolist()):
        shares = [s["sampled"][0]["rows"][step].tolist() for s in summaries]
        assert sorted(shares[0] + shares[1]) == sorted(batch), step
    # rank 0 wrote a checkpoint with both RNG states
    st = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert st["world_size"] == 2 and len(st["rng_per_rank"]) == 2
    assert "knn_top1" in (tmp_path / "run" / "metrics.jsonl").read_text()


def _rank_batches(
    n: int, batch: int, seed: int, world: int, epoch: int, start: int = 0
) -> list[list[list[int]]]:
    """``out[step][rank]``: the indices each of ``world`` samplers (global ``batch``, so
    ``batch // world`` per rank) yields at each step of ``epoch``, from batch ``start`` on."""
    per_rank = []
    for rank in range(world):
        sampler = EpochBatchSampler(n, batch // world, seed, rank, world)
        sampler.set_epoch(epoch, start)
        rows = list(sampler)
        assert len(rows) == len(sampler)
        per_rank.append(rows)
    assert len({len(rows) for rows in per_rank}) == 1, "ranks must take the same number of steps"
    return [list(step) for step in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("n", [96, 101])
def test_ranks_split_each_global_batch_into_disjoint_shares_of_the_one_process_batch(n):
    # DDP on N ranks must see, at every step, the global batch one process sees (the gradient
    # checks above assume it): each rank a disjoint batch/N share of it, same seed on every rank
    batch, seed, epochs = 12, 3, 3
    one_process, dropped = [], []
    for epoch in range(epochs):
        truth = [rows[0] for rows in _rank_batches(n, batch, seed, 1, epoch)]
        # drop_last: full batches only, each index at most once; the rest (n % batch) is left out
        assert len(truth) == n // batch and all(len(b) == batch for b in truth)
        flat = [i for b in truth for i in b]
        assert len(set(flat)) == len(flat) and set(flat) <= set(range(n))
        dropped.append(set(range(n)) - set(flat))
        assert len(dropped[-1]) == n % batch
        one_process.append(flat)
        for world in (1, 2, 3):
            for start in (0, 1, 5):
                steps = _rank_batches(n, batch, seed, world, epoch, start)
                assert len(steps) == len(truth) - start, (world, start)
                for step, shares in enumerate(steps, start):
                    assert all(len(s) == batch // world for s in shares), (world, step)
                    union = [i for s in shares for i in s]
                    assert len(set(union)) == len(union), f"ranks overlap: {world=} {step=}"
                    assert sorted(union) == sorted(truth[step]), (world, epoch, step)
    # a fresh order each epoch (and so a different left-out remainder, when there is one)
    assert len({tuple(flat) for flat in one_process}) == epochs
    if n % batch:
        assert len({frozenset(d) for d in dropped}) > 1


SYNC_LOSSES = ("emi", "mio")


def _sync_job(rank: int, world: int, out_dir: str) -> None:
    got = {name: _first_step_grads(name, world, rank, batchnorm="sync") for name in SYNC_LOSSES}
    got["emi_local_bn"] = _first_step_grads("emi", world, rank, batchnorm="local")
    torch.save(got, Path(out_dir) / f"grads_rank{rank}.pt")
    cfg = _two_step_config(
        "digits_emi.yaml", out_dir, "model.sync_batchnorm=true", "model.momentum_encoder=true"
    )
    # preflight refuses SyncBatchNorm off CUDA (true without these test kernels)
    with mock.patch("trainers.pretrain._will_use_cuda", return_value=True):
        summary = train(cfg)
    torch.save({"step": summary["step"]}, Path(out_dir) / f"summary{rank}.pt")


def test_sync_batchnorm_two_gloo_processes_match_one_process_full_batch_bn(tmp_path):
    world = 2
    _run_workers("sync", world, tmp_path)
    for name in SYNC_LOSSES:
        # the truth: one process, plain BatchNorm, whole batch (no SyncBatchNorm kernels)
        truth = _first_step_grads(name, 1, 0, batchnorm="sync")
        assert any("running_var" in k for k in truth)
        _assert_every_rank_equals(tmp_path, world, name, truth)
    # sensitivity: per-rank BatchNorm does not give the full-batch gradients or statistics
    truth = _first_step_grads("emi", 1, 0, batchnorm="sync")
    local = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)["emi_local_bn"]
    assert max(float((local[k] - truth[k]).abs().max()) for k in truth if "weight" in k) > 1e-6
    assert max(float((local[k] - truth[k]).abs().max()) for k in truth if "running" in k) > 1e-6
    # the real loop with SyncBatchNorm in the online and the momentum encoder, rank-0 evaluation
    for rank in range(world):
        assert torch.load(tmp_path / f"summary{rank}.pt", weights_only=True) == {"step": 2}
    st = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert st["ema"] is not None and st["config"]["model"]["sync_batchnorm"] is True
    # the checkpoint's BN keys are plain BatchNorm's: tools rebuild it without SyncBatchNorm
    from mitools.models import EncoderSpec, SSLModel

    SSLModel(EncoderSpec.from_dict(st["encoder_spec"])).load_state_dict(st["model"])
    assert "knn_top1" in (tmp_path / "run" / "metrics.jsonl").read_text()
