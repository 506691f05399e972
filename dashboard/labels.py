"""How the dashboard names things: models, tasks, statistic kinds, what a method or strategy needs,
rank plans, latency measurements and number formats; and how it reads a typed rank (pure functions;
no Streamlit)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import lowrank
from lowrank.evaluation.latency import latency_note as _latency_note
from lowrank.layers import break_even_rank
from lowrank.needs import needs_for
from lowrank.report import format_bytes as fmt_bytes  # noqa: F401  (one format for the dashboard and the report)
from lowrank.report import format_metric as fmt_metric  # noqa: F401
from lowrank.report import format_ms as fmt_ms  # noqa: F401

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


# Column format of values that may be far below 1 (predicted loss increases): scientific, never a row of zeros.
SMALL_NUMBER_FORMAT = "%.2e"


def fmt_small(value, unit: str = "") -> str:
    """A value that may be tiny or huge: ``"0"``, ``"3.2e-06 nats"``, ``"0.0412 nats"`` (never rounded to zero)."""
    if _missing(value):
        return "–"
    value = float(value)
    if value == 0:
        text = "0"
    elif abs(value) < 1e-3 or abs(value) >= 1e5:
        text = f"{value:.2e}"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


UNTRAINED_HEAD = "untrained head"


def quality_label(metric: str, untrained: bool = False) -> str:
    """``"Accuracy"``, or ``"Accuracy (untrained head)"`` for a model whose classification head is fresh."""
    return metric.capitalize() + (f" ({UNTRAINED_HEAD})" if untrained else "")


def untrained_head_text(model: str, task: str, command: str) -> str:
    """Why the accuracy of ``model`` on ``task`` means little, and how to fine-tune it (``command``: the command line)."""
    return (
        f"{model_label(model)} has no trained classification head for {task_label(task)}: its head is freshly "
        "initialised, so its accuracy (dense or compressed) is near chance and says nothing about a method. "
        f"Fine-tune it first, in the background below or with `{command}`."
    )


def fmt_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"1 h 05 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def method_label(method: str) -> str:
    return with_needs(method, needs_for([method]))


def strategy_label(strategy: str) -> str:
    return with_needs(strategy, needs_for(strategy=strategy))


def latency_help(info: dict | None, batch: str) -> str:
    """How a stored latency (``batch``: ``"b1"`` or ``"b32"``) was measured, for a metric's help."""
    note = latency_note(info, batch)
    return f"Forward pass on the CPU: {note}" if note else "Median forward pass on the CPU"


def latency_note(info, batch: str | None = None) -> str:
    """:func:`lowrank.evaluate.latency_note` of a stored run's ``latency_info`` (empty when none was recorded)."""
    return _latency_note(info if isinstance(info, dict) else None, batch)


_INTEGER = re.compile(r"^[+-]?\d+$")


class RankCellError(ValueError):
    """A typed rank that cannot be used (the cell is refused and reverted)."""


def read_rank(value, out_features: int, in_features: int) -> tuple[int | None, str | None]:
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
            raise RankCellError(
                f"{text!r} is not a number: type a whole number from 1 to {largest}, "
                "or clear the cell to keep the layer dense"
            ) from None
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
