"""Wall time of a call on a device: a warm-up, then the median of timed repeats within a time budget.

On CUDA the device is synchronized before and after each call, so the time covers the kernels, not
their launch. Cost: at most about ``budget_s`` seconds (one call when that alone uses half the budget).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(run: Callable[[], object], device) -> float:
    """Seconds one ``run()`` takes on ``device``."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Timing:
    """``seconds``: the median of ``repeats`` timed calls (after a warm-up call when ``warm_up``)."""

    seconds: float
    repeats: int
    warm_up: bool


def median_time(run: Callable[[], object], device, repeats: int = 5, budget_s: float | None = 5.0) -> Timing:
    """The median wall time of ``run()``: a warm-up call, then as many of ``repeats`` timed calls as ``budget_s``
    leaves room for at the warm-up's speed. A warm-up that alone uses half the budget is the measurement."""
    first = seconds_of(run, device)
    if budget_s is not None and first >= budget_s / 2:
        return Timing(first, 1, False)
    count = repeats if budget_s is None else max(1, min(repeats, int((budget_s - first) / max(first, 1e-9))))
    return Timing(statistics.median(seconds_of(run, device) for _ in range(count)), count, True)
