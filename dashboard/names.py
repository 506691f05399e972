"""How the dashboard names things: models, tasks, statistic kinds, what a method or strategy needs,
rank plans and latency measurements (pure functions; no Streamlit). Numbers as text are
:mod:`lowrank.report.formats`, shared with the report."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lowrank
from lowrank.evaluation.latency import latency_note
from lowrank.needs import needs_for
from lowrank.statistics import statistics_label

# The matrix whose singular values each metric of the Spectra page shows (lowrank.analysis.spectra.metrics()).
SPECTRUM_METRICS = {
    "svd": "none: W",
    "fwsvd": "Fisher rows: W diag(d)",
    "asvd": "mean |x|: W diag(E|x|)^a",
    "svd_llm": "activations: W L_A",
    "kfac_svd": "K-FAC: L_G^T W L_A",
}
TASK_LABELS = {
    "rotten_tomatoes": "Rotten Tomatoes (sentiment, accuracy)",
    "lee": "Lee corpus (English news text, perplexity)",
}
# What a model kind is and what it is measured by (lowrank.evaluation.quality.task_kind_for pairs them).
MODEL_KIND_LABELS = {"causal-lm": "a causal language model", "classifier": "a classifier", "encoder": "an encoder"}
TASK_KIND_LABELS = {"lm": "perplexity on a text task", "classification": "accuracy on a classification task"}


def spectrum_metric_label(method: str) -> str:
    """``"K-FAC: L_G^T W L_A (kfac_svd)"``; a method without a label shows as its name."""
    return f"{SPECTRUM_METRICS[method]} ({method})" if method in SPECTRUM_METRICS else method


def is_csv(key: str) -> bool:
    return str(key).lower().endswith(".csv")


def task_label(key: str) -> str:
    return f"CSV {Path(key).name}" if is_csv(key) else TASK_LABELS.get(key, key)


def model_label(key: str) -> str:
    return key if key in lowrank.PACKAGED else Path(key).name or key


def with_needs(name: str, needs: Iterable[str]) -> str:
    """``name`` with what it needs, e.g. ``"fwsvd (needs Fisher information)"``; ``name`` when nothing."""
    needs = tuple(needs)
    return f"{name} (needs {statistics_label(needs)})" if needs else name


def plan_fraction(plan) -> float:
    """Kept fraction of the compressible parameters of a :class:`lowrank.RankPlan`."""
    return plan.params / plan.dense_params if plan.dense_params else float("nan")


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


def method_label(method: str) -> str:
    return with_needs(method, lowrank.get_method(method).needs)


def strategy_label(strategy: str) -> str:
    return with_needs(strategy, needs_for(strategy=strategy))


def latency_help(info: dict | None, batch: str) -> str:
    """How a stored latency (``batch``: ``"b1"`` or ``"b32"``) was measured, for a metric's help."""
    note = latency_note(info, batch)
    return f"Forward pass on the CPU: {note}" if note else "Median forward pass on the CPU"
