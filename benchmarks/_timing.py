"""Timing helper shared by the benchmarks (machines are shared and noisy: best of repeats)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Run `fn` `repeats` times; return the shortest wall time (s) and the last result."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
