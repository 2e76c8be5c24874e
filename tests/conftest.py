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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (minutes each) are collected last. pytest-xdist's ``worksteal``
    scheduling (pyproject addopts) gives each worker a contiguous share of the collection and
    lets an idle worker take the tail half of a busy worker's queue, so slow tests at the tail
    end up split across workers. (Under the default ``load`` scheduling the digits SSL checks
    ended a fresh-clone CI run on one worker: 19 min wall for about 13 min of balanced work.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)  # stable
