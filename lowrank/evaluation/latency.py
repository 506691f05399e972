"""Latency: the median wall time of real forward passes, and the conditions it was measured under.

Each batch size (1 and 32 texts of the split) gets a warm-up pass and as many of 5 timed passes as
:data:`LATENCY_BUDGET_S` seconds leave room for; a pass that alone takes half the budget is the
measurement (a large model is timed once). With it are recorded the device, torch threads, CPU count,
1-minute load average and a fixed 512 x 512 matmul's time (:func:`measurement_conditions`): two
measurements are comparable only when these agree (:func:`conditions_differ`: calibration within a
factor :data:`CALIBRATION_RATIO`, load within :data:`LOAD_STEP` busy cores or half the cores).
Cost: at most about ``2 * LATENCY_BUDGET_S`` seconds per model.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from lowrank.data.batches import encode
from lowrank.data.tasks import load_task
from lowrank.evaluation.timing import median_time
from lowrank.progress import Progress, report

# Seconds per batch size that a latency measurement may take (warm-up included).
LATENCY_BUDGET_S = 5.0
# Two measurements' conditions disagree when the calibration differs by this factor or the load average
# by at least this many busy cores (or half the cores, whichever is more).
CALIBRATION_RATIO = 1.5
LOAD_STEP = 1.0


def calibration_ms(device=None, size: int = 512, repeats: int = 7) -> float:
    """Median time (ms) of one fixed ``size x size`` float32 matmul: how fast this machine is right now."""
    device = torch.device(device or "cpu")
    a = torch.ones(size, size, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measurement_conditions(device=None) -> dict:
    """What a latency depends on besides the model: device, torch threads, CPU count, the 1-minute load
    average and :func:`calibration_ms` right now."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": str(torch.device(device or "cpu")),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load": None if load is None else round(load, 2),
        "calibration_ms": round(calibration_ms(device), 3),
        "time": time.time(),
    }


def conditions_differ(recorded: dict | None, now: dict | None) -> str | None:
    """Every reason why latencies measured under ``recorded`` and ``now`` (:func:`measurement_conditions`)
    are not comparable (joined by "; "), or ``None`` when they are. Missing conditions (a
    measurement that recorded none) differ."""
    if not recorded or not now:
        return "no recorded measurement conditions"
    reasons = [
        f"{key} {recorded.get(key)} then, {now.get(key)} now"
        for key in ("device", "threads")
        if recorded.get(key) != now.get(key)
    ]
    then_ms, now_ms = recorded.get("calibration_ms"), now.get("calibration_ms")
    if then_ms and now_ms and max(then_ms, now_ms) / min(then_ms, now_ms) > CALIBRATION_RATIO:
        reasons.append(f"calibration matmul {then_ms:.1f} ms then, {now_ms:.1f} ms now")
    then_load, now_load = recorded.get("load"), now.get("load")
    if then_load is not None and now_load is not None:
        if abs(then_load - now_load) >= max(LOAD_STEP, 0.5 * (now.get("cpus") or 1)):
            reasons.append(f"load average {then_load:.1f} then, {now_load:.1f} now")
    return "; ".join(reasons) or None


@dataclass
class Latency:
    """One latency measurement: ``ms`` (median of ``repeats`` timed passes), whether a warm-up pass ran first."""

    ms: float
    repeats: int
    warm_up: bool


def measure_latency(
    loaded,
    texts: list,
    batch_size: int,
    max_length: int = 128,
    repeats: int = 5,
    budget_s: float | None = LATENCY_BUDGET_S,
) -> Latency:
    """Median wall time of forward passes on ``batch_size`` real inputs, within about ``budget_s`` seconds.

    The first pass is a warm-up; as many of ``repeats`` timed passes follow as the budget leaves room for
    (at the warm-up's speed). A pass that alone uses half the budget or more is the measurement itself
    (``repeats=1, warm_up=False``): a large model is measured once rather than six times."""
    sample = (texts * (batch_size // max(1, len(texts)) + 1))[:batch_size]
    inputs = {k: v.to(loaded.device) for k, v in encode(loaded.tokenizer, sample, max_length).items()}
    with torch.inference_mode():
        timing = median_time(lambda: loaded.model(**inputs), loaded.device, repeats, budget_s)
    return Latency(timing.seconds * 1000, timing.repeats, timing.warm_up)


def latency_ms(
    loaded,
    texts: list,
    batch_size: int,
    max_length: int = 128,
    repeats: int = 5,
    budget_s: float | None = LATENCY_BUDGET_S,
) -> float:
    """:func:`measure_latency` in milliseconds."""
    return measure_latency(loaded, texts, batch_size, max_length, repeats, budget_s).ms


def measure_latencies(
    loaded, task, split: str = "validation", budget_s: float | None = LATENCY_BUDGET_S, progress: Progress | None = None
) -> tuple[float, float, dict]:
    """``(ms at batch 1, ms at batch 32, how)`` on the first 32 texts of ``split``; ``how`` holds the
    :func:`measurement_conditions` and each measurement's repeats (stored with the run)."""
    task = load_task(task)
    texts = list(task.split_texts(split)[:32])
    report(progress, 0, 2, "measuring latency")
    conditions = measurement_conditions(loaded.device)
    b1 = measure_latency(loaded, texts, 1, budget_s=budget_s)
    report(progress, 1, 2, "measuring latency (batch 32)")
    b32 = measure_latency(loaded, texts, 32, budget_s=budget_s)
    report(progress, 2, 2, "latency measured")
    how = {
        "conditions": conditions,
        "budget_s": budget_s,
        "b1": {"repeats": b1.repeats, "warm_up": b1.warm_up},
        "b32": {"repeats": b32.repeats, "warm_up": b32.warm_up},
    }
    return b1.ms, b32.ms, how


def conditions_text(conditions: dict | None) -> str:
    """The recorded :func:`measurement_conditions` in words: threads, load average, calibration ("" when none)."""
    conditions = conditions or {}
    return ", ".join(
        x
        for x in (
            f"{conditions['threads']} thread{'s' if conditions['threads'] != 1 else ''}"
            if conditions.get("threads")
            else "",
            f"load average {conditions['load']:.1f}" if conditions.get("load") is not None else "",
            f"calibration {conditions['calibration_ms']:.1f} ms" if conditions.get("calibration_ms") else "",
        )
        if x
    )


def latency_note(how, batch: str | None = None) -> str:
    """One line on how latencies were measured, e.g. ``"median of 5 passes after a warm-up; 2 threads, load 1.9"``
    (``batch``: ``"b1"`` or ``"b32"`` for one of them). ``how``: the recorded conditions (a dict); anything else
    (``None``, a stored run's missing value) gives ``""``."""
    if not isinstance(how, dict) or not how:
        return ""

    def passes(entry: dict) -> str:
        if not entry.get("warm_up"):
            budget = how.get("budget_s")
            return f"a single pass (longer than half the {budget:g} s budget)" if budget else "a single pass"
        if entry["repeats"] == 1:
            return "one pass after a warm-up"
        return f"median of {entry['repeats']} passes after a warm-up"

    parts = [f"batch {key[1:]}: {passes(how[key])}" for key in ("b1", "b32") if key in how and (batch in (None, key))]
    if batch is not None:
        parts = [part.split(": ", 1)[1] for part in parts]
    where = conditions_text(how.get("conditions"))
    return (
        "; ".join(parts)
        + (f" ({where})" if where else "")
        + (f"; re-measured: {how['remeasured']}" if how.get("remeasured") else "")
    )
