"""Timing of ``ksg_mi`` (KD-tree backend, variant 1, k = 5) on d+d correlated Gaussians, against
its own no-numba fallback and a plain scipy KD-tree version, with the time of each component.

    python benchmarks/bench_ksg.py [--quick] [--ns 10000 30000 100000] [--dims 5] [--workers -1]
                                   [--torch]

Methods (all must return the same estimate as ours to 1e-12, which the script checks):

- ``ours``: :func:`mitools.mi.ksg_mi`, end to end (tie check, joint k-NN, both marginal counts);
  numba KD-tree kernels (``mitools.mi._ksg_count``) when numba is installed.
- ``fallback``: the same function with the numba kernels disabled (scipy cKDTree k-NN and
  scikit-learn KDTree counts), i.e. what runs without numba.
- ``plain``: the straightforward scipy implementation: ``cKDTree.query`` in the joint space, then
  ``cKDTree.query_ball_point(..., return_length=True)`` in each marginal.
- ``torch-cpu`` (with ``--torch``): the dense chunked torch backend, skipped at a size when its time
  extrapolated as n^2 from the previous size exceeds ``--max-seconds``.

A CPU-seconds line (process time summed over threads) gives a load-independent comparison of ours
and fallback; on an idle machine their wall time is about CPU / workers. Component lines give the
joint k-NN time and the two marginal-count times of ours and of plain
(timed separately from the end-to-end run). Timings are wall-clock seconds on a possibly shared
machine: the script prints the load average before and after; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitools.mi import _ksg_count  # noqa: E402
from mitools.mi.estimators import (  # noqa: E402
    _count_within,
    _joint_knn,
    _n_workers,
    ksg_mi,
)

K = 5


def plain_kdtree_parts(x: np.ndarray, y: np.ndarray, k: int, workers: int):
    """Plain scipy KSG (variant 1) in three timed steps; returns (estimate, seconds per step)."""
    n = x.shape[0]
    z = np.hstack([x, y])
    t0 = time.perf_counter()
    dist, _ = cKDTree(z).query(z, k=k + 1, p=np.inf, workers=workers)
    radius = np.nextafter(dist[:, k], 0)  # strict "< eps" as "<= next float below eps"
    t1 = time.perf_counter()
    counts, seconds = [], [t1 - t0]
    for a in (x, y):
        t0 = time.perf_counter()
        tree = cKDTree(a)
        counts.append(
            tree.query_ball_point(a, radius, p=np.inf, workers=workers, return_length=True) - 1
        )
        seconds.append(time.perf_counter() - t0)
    mi = float(digamma(k) + digamma(n) - np.mean(digamma(counts[0] + 1) + digamma(counts[1] + 1)))
    return mi, seconds


def ours_parts(x: np.ndarray, y: np.ndarray, k: int, workers: int) -> list[float]:
    """Seconds of the joint k-NN and of the two marginal counts inside ``ksg_mi`` (variant 1)."""
    w = _n_workers(workers)
    t0 = time.perf_counter()
    eps, _ = _joint_knn(np.hstack([x, y]), k, w, neighbours=False)
    seconds = [time.perf_counter() - t0]
    for a in (x, y):
        t0 = time.perf_counter()
        _count_within(a, eps, True, w)
        seconds.append(time.perf_counter() - t0)
    return seconds


def fallback_ksg(x: np.ndarray, y: np.ndarray, k: int, workers: int) -> float:
    """``ksg_mi`` with the numba kernels switched off."""
    saved = _ksg_count.AVAILABLE
    _ksg_count.AVAILABLE = False
    try:
        return ksg_mi(x, y, k, workers=workers)
    finally:
        _ksg_count.AVAILABLE = saved


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, 0.6 * x + 0.8 * rng.standard_normal((n, d))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1000, 3000 only (smoke run)")
    parser.add_argument("--ns", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[5], help="d of each variable")
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--torch", action="store_true", help="also time the torch CPU backend")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    ns = (1000, 3000) if args.quick else tuple(args.ns)
    w = args.workers

    print(
        f"ksg_mi benchmark, k={K}, variant 1, backend kdtree; cpus={os.cpu_count()}, "
        f"workers={_n_workers(w)}, numba={_ksg_count.AVAILABLE}; wall seconds"
    )
    print(f"before: {load()}", flush=True)
    xw, yw = data(300, 2)
    ksg_mi(xw, yw, K, workers=w)  # warm-up: imports, numba compilation (or its cache)
    fallback_ksg(xw, yw, K, w)
    plain_kdtree_parts(xw, yw, K, w)
    if args.torch:
        ksg_mi(xw, yw, K, backend="torch", device="cpu")
    failures = 0
    for d in args.dims:
        last_torch: tuple[int, float] | None = None
        for n in ns:
            x, y = data(n, d)
            cpu0 = time.process_time()
            t_ours, ref = timed(ksg_mi, x, y, K, workers=w)
            cpu_ours = time.process_time() - cpu0
            comp_ours = ours_parts(x, y, K, w)
            cpu0 = time.process_time()
            t_fb, v_fb = timed(fallback_ksg, x, y, K, w)
            cpu_fb = time.process_time() - cpu0
            t0 = time.perf_counter()
            v_plain, comp_plain = plain_kdtree_parts(x, y, K, w)
            t_plain = time.perf_counter() - t0
            row = {"ours": (t_ours, ref), "fallback": (t_fb, v_fb), "plain": (t_plain, v_plain)}
            if args.torch:
                guess = last_torch and last_torch[1] * (n / last_torch[0]) ** 2
                if guess and guess > args.max_seconds:
                    row["torch-cpu"] = None
                else:
                    row["torch-cpu"] = timed(ksg_mi, x, y, K, backend="torch", device="cpu")
                    last_torch = (n, row["torch-cpu"][0])
            cells = []
            for name, cell in row.items():
                if cell is None:
                    cells.append(f"{name} skipped")
                    continue
                seconds, value = cell
                agree = abs(value - ref) <= 1e-12
                failures += not agree
                mark = "" if agree else " (ESTIMATE DIFFERS)"
                cells.append(f"{name} {seconds:7.2f}s x{seconds / t_ours:5.2f}{mark}")
            print(f"{d}+{d} n={n:>7}: " + " | ".join(cells), flush=True)
            for name, comp in (("ours", comp_ours), ("plain", comp_plain)):
                print(
                    f"{'':>14}{name:>6} components: joint kNN {comp[0]:6.2f}s, count x "
                    f"{comp[1]:6.2f}s, count y {comp[2]:6.2f}s",
                    flush=True,
                )
            print(
                f"{'':>14}CPU seconds (all threads; load-independent): ours {cpu_ours:.2f}, "
                f"fallback {cpu_fb:.2f} (x{cpu_fb / cpu_ours:.2f})"
            )
            print(f"{'':>14}MI estimate {ref:.6f}", flush=True)
    print(f"after: {load()}")
    print("xR = time / time of ours (same run); components timed in separate calls")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
