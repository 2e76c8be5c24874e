"""Multi-node ``torchrun`` on one machine: two "nodes" (two torchrun agents, static rendezvous,
one process each) that do not share a file system, simulated by running each agent in its own
working directory with a relative ``train.run_dir``.

The truth is the single-node run the gloo DDP test already checks: ``torchrun --nproc_per_node=2``
with the same config. Two nodes must give the same weights (global ranks shard the data and pick
the writer; local ranks only pick the device), write only on the first node, resume when every
node holds the same checkpoint, and stop with one clear error, not a hang or silently diverging
weights, when only the first node has it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "trainers" / "configs" / "digits_mio.yaml"
SETTINGS = [
    "train.max_steps_per_epoch=2", "data.batch_size=32", "model.widths=[8,16]",
    "model.projector_dims=[16,8]", "eval.every_epochs=0", "train.deterministic=true",
    "train.run_dir=run", "train.progress=false", "train.checkpoint_every_epochs=1",
]  # fmt: skip
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(
    node_dirs: list[Path], epochs: int, nproc_per_node: int = 1, resume: bool = False
) -> list[subprocess.CompletedProcess]:
    """One torchrun agent per directory (its "node"), all started together; their results."""
    args = ["--config", str(CONFIG)]
    for item in [*SETTINGS, f"train.epochs={epochs}"]:
        args += ["--set", item]
    if resume:
        args += ["--resume", "auto"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for _attempt in range(3):
        # a port found free may be taken before the first agent binds it: then try another
        port = _free_port()
        procs = []
        for rank, node in enumerate(node_dirs):
            node.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(node_dirs)}",
                f"--node_rank={rank}", f"--nproc_per_node={nproc_per_node}",
                "--master_addr=127.0.0.1", f"--master_port={port}",
                "-m", "trainers.pretrain", *args,
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=node,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        results = []
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (a hang)")
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, None))
        if not any("address already in use" in r.stdout.lower() for r in results):
            return results
    return results


def _model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _model(a), _model(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_two_nodes_train_and_resume_like_one_node(tmp_path):
    single = tmp_path / "single"
    (done,) = _torchrun([single], epochs=3, nproc_per_node=2)
    assert done.returncode == 0, done.stdout[-3000:]
    reference = single / "run" / "last.pt"

    nodes = [tmp_path / "node0", tmp_path / "node1"]
    first = _torchrun(nodes, epochs=3)
    assert [r.returncode for r in first] == [0, 0], (
        first[0].stdout[-3000:] + first[1].stdout[-3000:]
    )
    assert not (nodes[1] / "run").exists()  # only global rank 0 writes
    assert torch.load(nodes[0] / "run" / "last.pt", weights_only=True)["world_size"] == 2
    _assert_same_weights(nodes[0] / "run" / "last.pt", reference)
    # sensitivity: one epoch less gives other weights
    with pytest.raises(AssertionError):
        _assert_same_weights(single / "run" / "epoch_0002.pt", reference)

    # killed after epoch 2, and only the first node has the checkpoint: every rank stops with
    # the same one-line error (before this was checked, the second node's rank started afresh
    # and the run hung at its end)
    cut = [tmp_path / "cut0", tmp_path / "cut1"]
    (cut[0] / "run").mkdir(parents=True)
    shutil.copy(single / "run" / "epoch_0002.pt", cut[0] / "run")
    refused = _torchrun(cut, epochs=3, resume=True)
    for result in refused:
        assert result.returncode != 0
        assert "error: --resume auto: the ranks do not resume from the same checkpoint" in (
            result.stdout
        ), result.stdout[-3000:]
        assert "rank 1: none found" in result.stdout
    assert sorted(p.name for p in (cut[0] / "run").iterdir()) == ["epoch_0002.pt"]

    # each node holds the same checkpoint: the resumed run ends where the uninterrupted one does
    (cut[1] / "run").mkdir()
    shutil.copy(single / "run" / "epoch_0002.pt", cut[1] / "run")
    resumed = _torchrun(cut, epochs=3, resume=True)
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stdout[-3000:]
    assert "resumed from run/epoch_0002.pt (epoch 2, step 4)" in resumed[0].stdout
    _assert_same_weights(cut[0] / "run" / "last.pt", reference)
