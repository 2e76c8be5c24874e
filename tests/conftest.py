import os

# pytest runs with -n 2 on 2 cores: one BLAS/OpenMP thread per worker avoids oversubscription,
# which otherwise makes small linear algebra 100x slower. Must be set before numpy/torch load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MITOOLS_NO_PROGRESS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import signal  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

_WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _signal_handlers_restored(request):
    """Each test leaves SIGINT/SIGTERM handlers as it found them (the trainer installs its own
    while it runs). A test that does not is named in a warning and the handlers are restored,
    so later tests in the same worker see the defaults (a fresh-clone CI run once saw a replaced
    SIGINT handler in an unrelated test)."""
    before = {sig: signal.getsignal(sig) for sig in _WATCHED_SIGNALS}
    yield
    for sig, handler in before.items():
        now = signal.getsignal(sig)
        if now != handler:
            warnings.warn(
                f"{request.node.nodeid} left the {signal.Signals(sig).name} handler {now!r} "
                f"(was {handler!r}); restored",
                stacklevel=1,
            )
            signal.signal(sig, handler)


def _torch_process_state() -> dict:
    import torch

    return {
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.are_deterministic_algorithms_enabled()": (
            torch.are_deterministic_algorithms_enabled()
        ),
    }


@pytest.fixture(autouse=True)
def _torch_process_state_restored(request):
    """A test that leaves torch's thread count or deterministic mode changed fails (after the
    state is restored for the tests that follow in its worker). Both once leaked: a test set 2
    threads on each of the 2 xdist workers (4 busy threads on 2 cores) and the trainer left
    deterministic mode on, and the digits SSL checks run later in the same workers took 1.2-1.8x
    their time alone (fresh-clone CI 19 min 42 s; 14 min once fixed)."""
    import torch

    before = _torch_process_state()
    yield
    after = _torch_process_state()
    if after != before:
        torch.set_num_threads(before["torch.get_num_threads()"])
        torch.use_deterministic_algorithms(before["torch.are_deterministic_algorithms_enabled()"])
        changed = {k: f"{before[k]} -> {after[k]}" for k in before if before[k] != after[k]}
        pytest.fail(f"{request.node.nodeid} left torch process state changed: {changed}")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (minutes each) start first, dealt round-robin to the heads of the
    xdist workers' initial shares. ``worksteal`` scheduling (pyproject addopts) gives worker i
    the i-th contiguous share of the collection (sizes as computed below) and lets an idle worker
    take half of a busy one's queue, so the fast tests fill in around the slow ones. (Slow tests
    last left one worker finishing a 6-minute check alone; under the default ``load`` scheduling,
    slow-first dealt them all to one worker.) Without xdist: slow tests last."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers <= 1 or not slow:
        items[:] = fast + slow
        return
    remaining, ordered = len(items), []
    for worker in range(workers):
        share = remaining // (workers - worker)
        remaining -= share
        heads = slow[worker::workers]
        n_fast = max(share - len(heads), 0)
        ordered += heads + fast[:n_fast]
        del fast[:n_fast]
    items[:] = ordered + fast
