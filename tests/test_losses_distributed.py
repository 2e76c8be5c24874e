"""2 gloo CPU ranks x N samples == 1 process x 2N: loss values and DDP-averaged gradients."""

from __future__ import annotations

import faulthandler
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mitools.distributed import gather_with_grad, is_distributed, rank, world_size
from mitools.losses import build_loss

N_PER_RANK, WORLD, D_IN, D_OUT = 12, 2, 6, 3
STEPS = 2  # two steps so that EMA state (EMI ema, CorInfoMax) is compared after an update

CONFIGS = {
    "emi": ("emi", {}),
    "emi_symmetric_taylor": ("emi", {"form": "symmetric", "logdet": "taylor", "order": 6}),
    "emi_ema_ridge": ("emi", {"covariance": "ema", "ema_momentum": 0.5, "ridge": 0.01}),
    "mio": ("mio", {"lam": 0.5, "tau_p": 0.3}),
    "mio_v3": ("mio", {"remove_positive_repulsion": True, "negative_bound": 0.5}),
    "simclr": ("simclr", {"temperature": 0.2}),
    "barlow_twins": ("barlow_twins", {}),
    "vicreg": ("vicreg", {}),
    "corinfomax": ("corinfomax", {"la_R": 0.5, "la_mu": 0.5}),
    "mec": ("mec", {"eps": 2.0}),
}


def _data():
    g = torch.Generator().manual_seed(0)
    n = N_PER_RANK * WORLD
    base = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    x1 = base + 0.3 * torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    x2 = base + 0.3 * torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    return x1, x2


def _run(gather: bool, local: slice) -> dict:
    """Values and parameter gradients of every config over STEPS steps on x[local]."""
    x1, x2 = _data()
    out = {}
    for key, (name, cfg) in CONFIGS.items():
        torch.manual_seed(1)
        enc = torch.nn.Linear(D_IN, D_OUT).double()
        loss = build_loss(name, gather_distributed=gather, **cfg)
        rows = []
        for step in range(STEPS):
            shift = 0.1 * step  # different inputs per step
            value = loss(enc(x1[local] + shift), enc(x2[local] - shift))
            grads = torch.autograd.grad(value, list(enc.parameters()))
            if gather:
                for g in grads:  # what DDP does: average over ranks
                    dist.all_reduce(g)
                    g /= dist.get_world_size()
            rows.append((value.item(), [g.clone() for g in grads]))
        out[key] = rows
    return out


def _worker(r: int, path: str) -> None:
    faulthandler.enable(all_threads=True)  # a native abort prints the Python stacks
    torch.set_num_threads(1)
    # A file rendezvous, not a TCP port picked in advance: another process may take a "free" port
    # before rank 0 binds it (a full-suite run once lost both ranks to SIGABRT here).
    dist.init_process_group(
        "gloo", init_method=f"file://{path}/rendezvous", rank=r, world_size=WORLD
    )
    try:
        assert is_distributed() and world_size() == WORLD and rank() == r
        # gather_with_grad itself: forward order, backward = sum over ranks of this slice's grads
        t = torch.full((2, 1), float(r + 1), dtype=torch.float64, requires_grad=True)
        full = gather_with_grad(t)
        (grad,) = torch.autograd.grad((full * torch.arange(4.0).double()[:, None]).sum(), t)
        checks = {"gathered": full.detach().flatten().tolist(), "grad": grad.flatten().tolist()}
        # unequal per-rank batches: the same one-line error on every rank, not a gloo abort
        uneven = torch.zeros(3 + r, 2, dtype=torch.float64)
        try:
            build_loss("simclr", gather_distributed=True)(uneven, uneven + 1)
            checks["uneven"] = "no error"
        except ValueError as exc:
            checks["uneven"] = str(exc)
        results = _run(True, slice(r * N_PER_RANK, (r + 1) * N_PER_RANK))
        torch.save({"checks": checks, "results": results}, f"{path}/rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(tmp,), nprocs=WORLD, join=True)
        return [torch.load(f"{tmp}/rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gather_with_grad_semantics(distributed_results):
    for r, res in enumerate(distributed_results):
        assert res["checks"]["gathered"] == [1.0, 1.0, 2.0, 2.0]
        # each rank's loss weights the gathered rows by 0..3; both ranks' grads are summed: 2x
        assert res["checks"]["grad"] == [2.0 * (2 * r), 2.0 * (2 * r + 1)]
        assert res["checks"]["uneven"] == (
            "gather_with_grad: the ranks hold different shapes (rank 0: (3, 2), rank 1: (4, 2)); "
            "all_gather needs the same per-rank batch on every rank (e.g. drop_last=True)"
        )
    assert not is_distributed() and world_size() == 1 and rank() == 0
    t = torch.ones(3, 2)
    assert gather_with_grad(t) is t


@pytest.fixture(scope="module")
def single_results():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(False, slice(None))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_two_ranks_equal_one_process(distributed_results, single_results, key):
    single = single_results[key]
    for res in distributed_results:
        for (v_d, g_d), (v_s, g_s) in zip(res["results"][key], single, strict=True):
            assert v_d == pytest.approx(v_s, rel=1e-9, abs=1e-12)
            for a, b in zip(g_d, g_s, strict=True):
                assert torch.allclose(a, b, rtol=1e-8, atol=1e-11), (key, (a - b).abs().max())
