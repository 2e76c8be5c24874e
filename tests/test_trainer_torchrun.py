"""The trainer under ``torchrun`` itself (the gloo DDP test spawns its processes directly).

Multi-node on one machine: two "nodes" (two torchrun agents, static rendezvous, one process each)
that do not share a file system, simulated by running each agent in its own working directory
with a relative ``train.run_dir``. The truth is the single-node run ``torchrun --nproc_per_node=2``
with the same config (the gloo DDP test ties its first-step gradients to one process with the
whole batch).

The two-node run is preempted as a cluster scheduler does it, with SIGTERM to every process of
the job (agents and workers, so each worker is signalled twice): the ranks must agree on one
step, rank 0 alone writes the checkpoint (on the first node only), and exit. Resuming then needs the checkpoint on every node: without it every rank stops with the same
one-line error (not a hang, not silently diverging weights); with it the resumed run ends with
exactly the single-node run's weights (global ranks shard the data, local ranks only pick the
device, and each rank's RNG state comes back).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "trainers" / "configs" / "digits_mio.yaml"
SETTINGS = [
    "train.max_steps_per_epoch=20", "data.batch_size=32", "model.widths=[8,16]",
    "model.projector_dims=[16,8]", "eval.every_epochs=0", "train.deterministic=true",
    "train.run_dir=run", "train.progress=false", "train.log_every_steps=1",
    "train.tensorboard=false", "train.epochs=2",
]  # fmt: skip
# Per torchrun phase. Under a load of about 11 on 2 cores the whole test took 315 s (three
# phases, about 105 s each on average), so 120 s left too little margin; a hang still fails
# well within gloo's 30-minute timeout.
TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(resume: bool) -> list[str]:
    args = ["--config", str(CONFIG)]
    for item in SETTINGS:
        args += ["--set", item]
    return [*args, "--resume", "auto"] if resume else args


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *cmd], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # a hang is killed with its workers
    )  # fmt: skip


def _finish(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (a hang)")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, None))
    return results


def _start_nodes(
    node_dirs: list[Path], nproc_per_node: int = 1, resume: bool = False
) -> list[subprocess.Popen]:
    """One torchrun agent per directory (its "node"), all started together."""
    port = _free_port()
    return [
        _start(
            [
                f"--nnodes={len(node_dirs)}",
                f"--node_rank={rank}",
                f"--nproc_per_node={nproc_per_node}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "trainers.pretrain",
                *_args(resume),
            ],
            node,
        )  # fmt: skip
        for rank, node in enumerate(node_dirs)
    ]


def _torchrun(
    node_dirs: list[Path], nproc_per_node: int = 1, resume: bool = False
) -> list[subprocess.CompletedProcess]:
    for _attempt in range(3):
        # a port found free may be taken before the first agent binds it: then try another
        results = _finish(_start_nodes(node_dirs, nproc_per_node, resume))
        if not any("address already in use" in r.stdout.lower() for r in results):
            return results
    return results


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers; Linux /proc)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _model(a), _model(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_two_nodes_preempted_and_resumed_end_like_one_node(tmp_path):
    (done,) = _torchrun([tmp_path / "single"], nproc_per_node=2)
    assert done.returncode == 0, done.stdout[-3000:]
    reference = tmp_path / "single" / "run" / "last.pt"
    assert torch.load(reference, weights_only=True)["step"] == 40

    # preemption once training is under way
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    procs = _start_nodes(nodes)
    metrics = nodes[0] / "run" / "metrics.jsonl"
    deadline = time.time() + TIMEOUT_S
    while not (metrics.exists() and metrics.read_text().count('"kind": "step"') >= 5):
        assert all(p.poll() is None for p in procs), "the run ended before it was signalled"
        assert time.time() < deadline, "no training steps logged"
        time.sleep(0.02)
    # as a scheduler (Slurm) does it: SIGTERM to every process of the job, the agents and their
    # workers, so each worker also gets its agent's forwarded SIGTERM about 1 ms later
    for pid in [p.pid for p in procs] + [w for p in procs for w in _children(p.pid)]:
        os.kill(pid, signal.SIGTERM)
    stopped = _finish(procs)
    assert "signal SIGTERM: checkpoint run/last.pt" in stopped[0].stdout, stopped[0].stdout[-3000:]
    assert not (nodes[1] / "run").exists()  # only global rank 0 writes
    ckpt = nodes[0] / "run" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert 5 <= state["step"] < 40 and state["world_size"] == 2
    assert (state["epoch"], state["batch_in_epoch"]) == divmod(state["step"], 20)
    where = f"(epoch {state['epoch']}, step {state['step']})"

    # only the first node has the checkpoint: every rank stops with the same one-line error
    # (before this was checked, the second node's rank started afresh: the run hung, or
    # aborted in mismatched gloo collectives when the checkpoint was mid-epoch)
    before = ckpt.read_bytes()
    refused = _torchrun(nodes, resume=True)
    for result in refused:
        assert result.returncode != 0
        assert "error: --resume auto: the ranks do not resume from the same checkpoint" in (
            result.stdout
        ), result.stdout[-3000:]
        assert "rank 1: none found" in result.stdout
    assert ckpt.read_bytes() == before

    # every node holds the checkpoint: the resumed run ends where the single-node run does
    (nodes[1] / "run").mkdir()
    shutil.copy(ckpt, nodes[1] / "run" / "last.pt")
    resumed = _torchrun(nodes, resume=True)
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stdout[-3000:]
    assert f"resumed from run/last.pt {where}" in resumed[0].stdout
    _assert_same_weights(ckpt, reference)
    # sensitivity: the checkpoint at the signal is not the end of the run
    with pytest.raises(AssertionError):
        _assert_same_weights(tmp_path / "node1" / "run" / "last.pt", reference)
