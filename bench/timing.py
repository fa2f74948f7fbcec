"""One way to time a model call for every benchmark: median of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def images_per_second(
    predict: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float, warm_ups: int = 1
) -> float:
    """``len(batch)`` over the median time of ``predict(batch)``, called for about
    ``seconds`` (at least 3 times) after ``warm_ups`` untimed calls (the first
    call of a shape sets up buffers and, on CUDA, picks its algorithms)."""
    for _ in range(warm_ups):
        predict(batch)
    timings: list[float] = []
    stop = time.perf_counter() + seconds
    while len(timings) < 3 or (time.perf_counter() < stop and len(timings) < 200):
        started = time.perf_counter()
        predict(batch)
        timings.append(time.perf_counter() - started)
    return len(batch) / statistics.median(timings)
