"""Timing of ``ksg_mi`` (variant 1, k = 5) against a plain KD-tree version, the brute force and the
torch backend, on d+d correlated Gaussians.

    python benchmarks/bench_ksg.py [--quick] [--max-seconds 60] [--workers -1]

"plain" is the straightforward implementation: cKDTree k-NN query in the joint space, then
``query_ball_point`` neighbour lists in each marginal, counted with ``len``. A method is skipped
at a size when its time extrapolated from the previous size (x n^2 for brute force and torch,
x n^1.5 for the trees) exceeds ``--max-seconds``. Every method must return the same estimate
as ours (to 1e-12), which the script checks. Timings are wall-clock seconds and are noisy on a
shared machine.
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

from mitools.mi.estimators import ksg_mi, ksg_mi_bruteforce  # noqa: E402

K = 5


def plain_kdtree_ksg(x: np.ndarray, y: np.ndarray, k: int = K, workers: int = -1) -> float:
    """The textbook KD-tree KSG (variant 1): ball-point neighbour lists, counted with len()."""
    n = x.shape[0]
    z = np.hstack([x, y])
    dist, _ = cKDTree(z).query(z, k=k + 1, p=np.inf, workers=workers)
    radius = np.nextafter(dist[:, k], 0)  # strict "< eps" as "<= next float below eps"
    counts = []
    for a in (x, y):
        lists = cKDTree(a).query_ball_point(a, radius, p=np.inf, workers=workers)
        counts.append(np.array([len(v) for v in lists]) - 1)
    return float(digamma(k) + digamma(n) - np.mean(digamma(counts[0] + 1) + digamma(counts[1] + 1)))


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, 0.6 * x + 0.8 * rng.standard_normal((n, d))


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1000 only (smoke run)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[1, 5, 20], help="d of each variable"
    )
    args = parser.parse_args(argv)

    import torch

    ns = (1000,) if args.quick else (1000, 10_000, 100_000)
    dims = tuple(args.dims)
    methods = {
        "ours": (lambda x, y: ksg_mi(x, y, K, workers=args.workers), 1.5),
        "plain": (lambda x, y: plain_kdtree_ksg(x, y, K, workers=args.workers), 1.5),
        "brute": (lambda x, y: ksg_mi_bruteforce(x, y, K), 2.0),
        "torch-cpu": (lambda x, y: ksg_mi(x, y, K, backend="torch", device="cpu"), 2.0),
    }
    if torch.cuda.is_available():
        methods["torch-cuda"] = (lambda x, y: ksg_mi(x, y, K, backend="torch", device="cuda"), 2.0)
    print(
        f"ksg_mi benchmark, k={K}, variant 1; cpus={os.cpu_count()}, torch threads="
        f"{torch.get_num_threads()}, cuda={torch.cuda.is_available()}; wall seconds "
        "(shared machine: noisy)"
    )
    xw, yw = data(200, 2)
    for fn, _ in methods.values():  # warm-up: imports, thread pools, CUDA context
        fn(xw, yw)
    header = f"{'dims':>6} {'n':>7} " + " ".join(f"{m:>16}" for m in methods)
    print(header)
    failures = 0
    for d in dims:
        last: dict[str, tuple[int, float]] = {}
        for n in ns:
            x, y = data(n, d)
            cells, ref = {}, None
            for name, (fn, power) in methods.items():
                # ours is the reference: always timed unless hopeless (10x the limit)
                limit = args.max_seconds * (10 if name == "ours" else 1)
                if name in last and last[name][1] * (n / last[name][0]) ** power > limit:
                    cells[name] = "skip"
                    last[name] = (n, np.inf)
                    continue
                if name == "brute" and n > 10_000:
                    cells[name] = "skip"
                    continue
                seconds, value = timed(fn, x, y)
                last[name] = (n, seconds)
                if ref is None:  # first method timed at this size: ours, unless skipped
                    ref = (seconds, value)
                agree = abs(value - ref[1]) <= 1e-12
                failures += not agree
                ratio = seconds / ref[0]
                cells[name] = f"{seconds:7.2f}s x{ratio:5.2f}" + ("" if agree else "!")
            print(f"{d:>3}+{d:<2} {n:>7} " + " ".join(f"{cells[m]:>16}" for m in methods))
            if ref is not None:
                print(f"{'':>15}MI estimate {ref[1]:.6f}", flush=True)
    print("xR = time / time of ours; '!' = estimate differs from ours by more than 1e-12")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
