"""How the dashboard names things: models, tasks, statistic kinds, what a method or strategy needs,
rank plans, latency measurements and number formats; and how it reads a typed rank (pure functions;
no Streamlit)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional

import lowrank
from lowrank.evaluate import latency_note as _latency_note
from lowrank.layers import break_even_rank
from lowrank.needs import needs_for

TASK_LABELS = {
    "rotten_tomatoes": "Rotten Tomatoes (sentiment, accuracy)",
    "lee": "Lee corpus (English news text, perplexity)",
}
# What a model kind is and what it is measured by (lowrank.evaluate.task_kind_for pairs them).
MODEL_KIND_LABELS = {"causal-lm": "a causal language model", "classifier": "a classifier", "encoder": "an encoder"}
TASK_KIND_LABELS = {"lm": "perplexity on a text task", "classification": "accuracy on a classification task"}
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


def latency_help(info: Optional[dict], batch: str) -> str:
    """How a stored latency (``batch``: ``"b1"`` or ``"b32"``) was measured, for a metric's help."""
    note = latency_note(info, batch)
    return f"Forward pass on the CPU: {note}" if note else "Median forward pass on the CPU"


def latency_note(info, batch: Optional[str] = None) -> str:
    """:func:`lowrank.evaluate.latency_note` of a stored run's ``latency_info`` (empty when none was recorded)."""
    return _latency_note(info if isinstance(info, dict) else None, batch)


_INTEGER = re.compile(r"^[+-]?\d+$")


class RankCellError(ValueError):
    """A typed rank that cannot be used (the cell is refused and reverted)."""


def read_rank(value, out_features: int, in_features: int) -> tuple[Optional[int], Optional[str]]:
    """A rank typed into the plan table: ``(rank, note)``; ``rank`` ``None`` keeps the layer dense.

    Empty keeps the layer dense; a rank at or above break-even is kept dense with a ``note``. Text, a
    fraction, zero or a negative number and a rank above ``min(out, in)`` raise :class:`RankCellError`
    (never coerced)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    text = str(value).strip()
    if not text:
        return None, None
    largest = min(out_features, in_features)
    if not _INTEGER.match(text):
        try:
            number = float(text)
        except ValueError:
            raise RankCellError(f"{text!r} is not a number: type a whole number from 1 to {largest}, "
                                "or clear the cell to keep the layer dense") from None
        if not math.isfinite(number) or number != int(number):
            raise RankCellError(f"{text} is not a whole number: a rank counts columns (1 to {largest})")
        text = str(int(number))
    rank = int(text)
    if rank < 1:
        raise RankCellError(f"rank {rank} is out of range 1..{largest}: clear the cell to keep the layer dense")
    if rank > largest:
        raise RankCellError(f"rank {rank} is out of range 1..{largest} for a {out_features}×{in_features} weight")
    even = break_even_rank(out_features, in_features)
    if rank >= even:
        return None, f"rank {rank} is at or above break-even ({even}): kept dense"
    return rank, None
