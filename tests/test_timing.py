"""mitools.timing: warm-up calls are untimed, every timed call is measured."""

from __future__ import annotations

import time

import torch

from mitools.timing import time_calls


def test_time_calls_measures_each_call_after_the_warmup():
    calls = []

    def fn():
        calls.append(len(calls))
        time.sleep(0.02 if len(calls) > 2 else 0.0)  # only the timed calls sleep

    times = time_calls(fn, torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    assert all(0.02 <= t < 1.0 for t in times)
