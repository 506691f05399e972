"""How the dashboard names things: models, tasks, statistic kinds, what a method or strategy needs,
rank plans, and number formats (pure functions; no Streamlit)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

import lowrank
from lowrank.needs import needs_for

TASK_LABELS = {
    "rotten_tomatoes": "Rotten Tomatoes (sentiment, accuracy)",
    "lee": "Lee corpus (English news text, perplexity)",
}
# Readable names of statistic kinds (lowrank.methods.STATISTICS); an unlisted kind shows as its key.
STATISTIC_LABELS = {
    "fisher": "Fisher information",
    "mask": "pruning mask",
    "activations": "input activation statistics",
    "gradients": "output gradient statistics",
}


def is_csv(key: str) -> bool:
    return str(key).lower().endswith(".csv")


def task_label(key: str) -> str:
    return f"CSV {Path(key).name}" if is_csv(key) else TASK_LABELS.get(key, key)


def model_label(key: str) -> str:
    return key if key in lowrank.PACKAGED else Path(key).name or key


def statistics_label(needs: Iterable[str]) -> str:
    """``("fisher", "mask")`` -> ``"Fisher information and pruning mask"``."""
    return " and ".join(STATISTIC_LABELS.get(kind, kind) for kind in needs)


def with_needs(name: str, needs: Iterable[str]) -> str:
    """``name`` with what it needs, e.g. ``"fwsvd (needs Fisher information)"``; ``name`` when nothing."""
    needs = tuple(needs)
    return f"{name} (needs {statistics_label(needs)})" if needs else name


def plan_fraction(plan) -> float:
    """Kept fraction of the compressible parameters of a :class:`lowrank.RankPlan`."""
    return plan.params / plan.dense_params if plan.dense_params else float("nan")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_params(n) -> str:
    if _missing(n):
        return "–"
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def fmt_metric(metric: Optional[str], value) -> str:
    if _missing(value):
        return "–"
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def fmt_bytes(n) -> str:
    return "–" if _missing(n) else f"{float(n) / 1e6:.1f} MB"


def fmt_ms(v) -> str:
    return "–" if _missing(v) else f"{float(v):.1f} ms"


def method_label(method: str) -> str:
    return with_needs(method, needs_for([method]))


def strategy_label(strategy: str) -> str:
    return with_needs(strategy, needs_for(strategy=strategy))
