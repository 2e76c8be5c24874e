"""Wall-clock timing of code that may run on a GPU, for the benchmarks.

CUDA kernels run asynchronously, so a timer must wait for the device before it reads the clock;
:func:`time_calls` synchronises after the warm-up and after every timed call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["synchronize", "time_calls"]


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1
) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones (allocator,
    cuDNN/cuBLAS handles, lazy imports); the caller picks the statistic (median or min)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
