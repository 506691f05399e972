"""Numbers as text, one format for each kind of number, wherever it is shown.

A task metric with the decimals of its row of :data:`lowrank.experiments.compare.METRICS`; sizes in MB
(``1e6`` bytes); latencies in ms; parameter counts as ``512``, ``12.3k``, ``4.56M``; values that may be
tiny or huge in scientific notation past ``1e-3`` and ``1e5`` (never rounded to zero); durations in
seconds, minutes or hours. A missing value (``None``, NaN, pandas' NA: :func:`number`) reads ``–``.
"""

from __future__ import annotations

import pandas as pd

from lowrank.experiments.compare import metric_info

MISSING = "–"
SMALL_NUMBER_FORMAT = "%.2e"  # column format of values that may be far below 1 (predicted loss increases)


def number(value) -> float | None:
    """A stored value as a float; ``None`` when it is missing."""
    return None if value is None or pd.isna(value) else float(value)


def format_metric(metric: str | None, value) -> str:
    value = number(value)
    return MISSING if value is None else f"{value:.{metric_info(metric).decimals}f}"


def format_bytes(n) -> str:
    n = number(n)
    return MISSING if n is None else f"{n / 1e6:.1f} MB"


def format_ms(v) -> str:
    v = number(v)
    return MISSING if v is None else f"{v:.1f} ms"


def format_params(n) -> str:
    n = number(n)
    if n is None:
        return MISSING
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def format_small(value, unit: str = "") -> str:
    """A value that may be tiny or huge: ``"0"``, ``"3.2e-06 nats"``, ``"0.0412 nats"`` (never rounded to zero)."""
    value = number(value)
    if value is None:
        return MISSING
    if value == 0:
        text = "0"
    elif abs(value) < 1e-3 or abs(value) >= 1e5:
        text = f"{value:.2e}"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"1 h 05 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
