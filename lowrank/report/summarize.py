"""The result story of one model and task, from the stored runs only: :func:`summary` picks the best method at
each budget and compares it with the dense model and with plain SVD (quality, size on disk, measured latency);
:func:`headlines` says it in plain sentences.

Which runs. The reference is :func:`lowrank.experiments.compare.reference_run` of the model and task (the newest
finished dense run); compressed runs count when they were measured on its split with its evaluation limit and
protocol (:func:`lowrank.experiments.compare.comparable`). Of several runs of one method at one budget (e.g. two
strategies), the newest counts; the best is the highest value, or the lowest for a metric where lower is better
(:data:`lowrank.experiments.compare.METRICS`). Nothing is measured here: the rows come from the run store.
:func:`saved_models` lists the saved compressed models of the best runs, whose generations :func:`with_generations`
adds; :func:`drop_checks` adds the SVD-drop metric's prediction for each stored plain-SVD run (from its ranks, the
weights and the Fisher: one weighted and one plain truncation per layer and run), next to what that run measured.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from lowrank.analysis.metrics import risk_summary, risk_table
from lowrank.evaluation.latency import latency_note
from lowrank.evaluation.quality import chance_accuracy, destroyed
from lowrank.evaluation.throughput import throughput_sentence
from lowrank.experiments.compare import DENSE, comparable, metric_info, reference_run
from lowrank.methods import BASELINE
from lowrank.report.formats import format_bytes, format_metric, format_ms, number

HEADLINE_BUDGET = 0.5  # the budget the headline figures are taken at (the nearest stored one)
SLOWER_RATIO = 1.1  # a compressed model "reads slower" than dense above this multiple of dense's latency


@dataclass(frozen=True)
class SummaryRow:
    """The best method at one budget (a stored run), with plain SVD's result at the same budget."""

    budget: float
    method: str
    run_id: int
    value: float
    params_linear: int | None
    kept_fraction: float | None
    size_bytes: int | None
    latency_ms_b1: float | None
    latency_ms_b32: float | None
    latency_note: str
    svd_value: float | None = None
    svd_run_id: int | None = None
    destroyed: str | None = None  # why the best run destroys the model (lowrank.evaluation.quality.destroyed), or None
    svd_destroyed: str | None = None  # the same for plain SVD's run
    throughput: dict | None = None  # tokens/s against dense (lowrank.evaluation.throughput), causal LMs; else None

    @property
    def warning(self) -> str:
        """The destroyed-model flags of this budget in words ("" when neither run destroys the model)."""
        runs = [(self.method, self.destroyed)] + ([(BASELINE, self.svd_destroyed)] if self.method != BASELINE else [])
        flags = [f"{who}: {why}" for who, why in runs if why]
        return "; ".join(flags)


@dataclass(frozen=True)
class DropCheck:
    """The SVD-drop metric (:func:`lowrank.analysis.metrics.risk_summary`) on one stored plain-SVD run, beside what
    the run measured against dense: the predicted and measured loss increase (nats) and quality change."""

    budget: float
    run_id: int
    predicted_loss_increase: float  # sum over layers of the predicted loss increase of their truncation
    expected_to_drop: bool  # the metric's verdict
    measured_loss_increase: float | None  # the run's loss minus the dense loss
    measured_change: float | None  # the run's metric minus dense (accuracy: < 0 is a drop)


@dataclass(frozen=True)
class Summary:
    model: str
    task: str
    metric: str | None
    split: str | None
    eval_limit: int | None
    dense: dict | None  # the dense run (a row of the store), or None
    rows: tuple[SummaryRow, ...]  # by budget
    runs: pd.DataFrame = field(repr=False)  # the finished runs compared (dense first)
    headlines: tuple[str, ...] = ()
    created: float = 0.0
    drop_checks: tuple[DropCheck, ...] = ()  # :func:`with_drop_checks`
    generations: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # :func:`with_generations`
    protocol: str | None = None  # how every value compared was measured (the reference's protocol)

    @property
    def higher_is_better(self) -> bool:
        return metric_info(self.metric).higher_is_better

    @property
    def headline(self) -> SummaryRow | None:
        """The row at the stored budget nearest :data:`HEADLINE_BUDGET` (the headline figures), or ``None``."""
        return min(self.rows, key=lambda row: (abs(row.budget - HEADLINE_BUDGET), row.budget)) if self.rows else None

    @property
    def empty(self) -> bool:
        return not self.rows and self.dense is None

    def drop_table(self) -> pd.DataFrame:
        """One line per plain-SVD run: the SVD-drop metric's prediction and what was measured."""
        return pd.DataFrame(
            [
                {
                    "budget": c.budget,
                    "predicted loss increase (nats)": c.predicted_loss_increase,
                    "measured loss increase (nats)": c.measured_loss_increase,
                    "predicted": "drop" if c.expected_to_drop else "no drop",
                    f"measured {self.metric or 'value'} change": c.measured_change,
                    "run": c.run_id,
                }
                for c in self.drop_checks
            ]
        )

    def table(self) -> pd.DataFrame:
        """One line per budget: the best method, its quality against dense and plain SVD, size and latency."""
        dense = self.dense or {}
        return pd.DataFrame(
            [
                {
                    "budget": row.budget,
                    "best method": row.method,
                    self.metric or "value": row.value,
                    "vs dense": _difference(row.value, dense.get("value")),
                    "plain SVD": row.svd_value,
                    "vs plain SVD": _difference(row.value, row.svd_value),
                    "size (MB)": _mb(row.size_bytes),
                    "latency b1 (ms)": row.latency_ms_b1,
                    "latency b32 (ms)": row.latency_ms_b32,
                    "run": row.run_id,
                    "destroys the model?": row.warning,
                }
                for row in self.rows
            ]
        )


def _difference(a, b) -> float | None:
    a, b = number(a), number(b)
    return None if a is None or b is None else a - b


def _mb(n) -> float | None:
    n = number(n)
    return None if n is None else n / 1e6


def summary(store, model: str, task: str) -> Summary:
    """The best method at each budget of ``model`` on ``task`` from the finished runs in ``store`` (a
    :class:`lowrank.experiments.store.RunStore`), against the dense model and plain SVD (see the module docstring)."""
    runs = store.runs(model=model, task=task, status="done")
    runs = runs[runs["value"].notna()]
    dense = reference_run(store, task, model=model)
    compressed = comparable(runs[(runs["method"] != DENSE) & runs["budget"].notna()], dense)
    reference = dense if dense is not None else (compressed.iloc[0].to_dict() if len(compressed) else None)
    compressed = compressed.assign(budget=compressed["budget"].round(4)).drop_duplicates(["method", "budget"])
    metric = reference["metric"] if reference is not None else None
    higher = metric_info(metric).higher_is_better
    chance = _chance(task, reference["split"]) if len(compressed) and metric == "accuracy" else None

    def ruined(value) -> str | None:
        return destroyed(metric, value, None if dense is None else number(dense["value"]), chance)

    rows = []
    for budget, group in compressed.groupby("budget", sort=True):
        best = group.loc[group["value"].idxmax() if higher else group["value"].idxmin()]
        svd = group[group["method"] == BASELINE]
        svd_value = float(svd["value"].iloc[0]) if len(svd) else None
        rows.append(
            SummaryRow(
                budget=float(budget),
                method=str(best["method"]),
                run_id=int(best["id"]),
                value=float(best["value"]),
                params_linear=_int(best["params_linear"]),
                kept_fraction=number(best["kept_fraction"]),
                size_bytes=_int(best["size_bytes"]),
                latency_ms_b1=number(best["latency_ms_b1"]),
                latency_ms_b32=number(best["latency_ms_b32"]),
                latency_note=latency_note(best["latency_info"] if isinstance(best["latency_info"], dict) else None),
                svd_value=svd_value,
                svd_run_id=int(svd["id"].iloc[0]) if len(svd) else None,
                destroyed=ruined(float(best["value"])),
                svd_destroyed=None if svd_value is None else ruined(svd_value),
                throughput=best.get("throughput") if isinstance(best.get("throughput"), dict) else None,
            )
        )
    dense_row = runs[runs["id"] == dense["id"]] if dense is not None else runs.iloc[:0]
    shown = pd.concat([frame for frame in (dense_row, compressed) if len(frame)]) if len(runs) else runs
    result = Summary(
        model=model,
        task=task,
        metric=metric,
        split=None if reference is None else reference["split"],
        eval_limit=None if reference is None else _int(reference["eval_limit"]),
        protocol=None if reference is None or not isinstance(reference.get("protocol"), str) else reference["protocol"],
        dense=dense,
        rows=tuple(rows),
        runs=shown,
        created=time.time(),
    )
    return replace(result, headlines=tuple(headlines(result)))


def _chance(task: str, split: str) -> float | None:
    """:func:`lowrank.evaluation.quality.chance_accuracy` of the stored task key, ``None`` when the task cannot be read now."""
    try:
        return chance_accuracy(task, split)
    except (ValueError, OSError, KeyError, RuntimeError):  # a CSV gone, an asset not fetchable now: chance unknown
        return None


def drop_checks(s: Summary, weights: dict, fishers: dict) -> tuple[DropCheck, ...]:
    """A :class:`DropCheck` for every plain-SVD run of ``s``'s rows, at that run's ranks (``weights`` and ``fishers``:
    ``{layer: tensor}`` of the model). Costs one weighted and one plain truncation per factorized layer and run."""
    checks = []
    dense = s.dense or {}
    for row in s.rows:
        if row.svd_run_id is None:
            continue
        run = s.runs[s.runs["id"] == row.svd_run_id].iloc[0]
        ranks = run["ranks"] if isinstance(run["ranks"], dict) else {}
        verdict = risk_summary(risk_table(weights, fishers, {k: int(v) for k, v in ranks.items()}))
        checks.append(
            DropCheck(
                budget=row.budget,
                run_id=row.svd_run_id,
                predicted_loss_increase=verdict["total_loss_svd"],
                expected_to_drop=verdict["svd_expected_to_drop"],
                measured_loss_increase=_difference(run["loss"], dense.get("loss")),
                measured_change=_difference(run["value"], dense.get("value")),
            )
        )
    return tuple(checks)


def saved_models(s: Summary) -> dict[str, str]:
    """``{"<method> at <budget>": folder}`` for the summary's best runs whose compressed model was saved and is
    still there (runs of the Factorize page and of the demos are saved), by budget."""
    folders = s.runs.set_index("id")["output_dir"] if "output_dir" in s.runs.columns else pd.Series(dtype=object)
    saved = {}
    for row in s.rows:
        folder = folders.get(row.run_id)
        if isinstance(folder, str) and Path(folder).is_dir():
            saved[f"{row.method} at {row.budget:.0%}"] = folder
    return saved


def with_generations(s: Summary, table: pd.DataFrame) -> Summary:
    """``s`` with the generations side by side (:func:`lowrank.generation.compare_generations`: a ``prompt`` column,
    then one per model) that the report shows."""
    return replace(s, generations=table)


def with_drop_checks(s: Summary, checks: Sequence[DropCheck]) -> Summary:
    """``s`` with ``checks`` (:func:`drop_checks`) and their headline sentence."""
    checked = replace(s, drop_checks=tuple(checks))
    return replace(checked, headlines=tuple(headlines(checked)))


def _drop_sentence(s: Summary) -> str | None:
    """The SVD-drop metric's verdict at the headline budget, next to what plain SVD measured."""
    row = s.headline
    check = next((c for c in s.drop_checks if row is not None and c.budget == row.budget), None)
    if check is None:
        return None
    measured = [
        f"{value:+.3g}{unit}"
        for value, unit in ((check.measured_loss_increase, " nats"), (check.measured_change, f" {s.metric or 'value'}"))
        if value is not None
    ]
    measured = f" (measured: {', '.join(measured)})" if measured else ""
    verdict = "a drop" if check.expected_to_drop else "no drop"
    return (
        f"From the weights and the Fisher alone, the SVD-drop metric predicts {verdict} for plain SVD at "
        f"{check.budget:.0%}: a loss increase of {check.predicted_loss_increase:.3g} nats{measured}."
    )


def _int(value) -> int | None:
    value = number(value)
    return None if value is None else int(value)


def headlines(s: Summary) -> list[str]:
    """Plain sentences on the headline row (:attr:`Summary.headline`): quality against dense and plain SVD,
    then size and latency against dense."""
    row, dense = s.headline, s.dense
    if row is None:
        return []
    metric = s.metric or "value"
    where = f"At {row.budget:.0%} of the compressible parameters"
    d = number((dense or {}).get("value"))
    quality = f"{row.method} gives {metric} {format_metric(s.metric, row.value)}"
    if d is not None:
        quality += f" (dense {format_metric(s.metric, d)}"
        quality += f", plain SVD {format_metric(s.metric, row.svd_value)})" if row.svd_value is not None else ")"
    lines = []
    if row.method == BASELINE:
        lines.append(f"{where}, plain SVD is the best stored method: {quality}.")
    elif row.svd_value is None or d is None:
        lines.append(
            f"{where}, {quality}" + ("" if row.svd_value is not None else "; plain SVD was not run here") + "."
        )
    else:
        # points: accuracy in percentage points; perplexity in its own units (lower is better)
        scale, unit = (100.0, "points") if s.higher_is_better else (1.0, f"{metric} points")
        sign = 1.0 if s.higher_is_better else -1.0
        lost = sign * (d - row.svd_value) * scale  # what plain SVD loses against dense
        kept = sign * (row.value - row.svd_value) * scale  # what the best method wins back
        if lost > 0:
            verb = "loses" if s.higher_is_better else "adds"
            lines.append(
                f"{where}, {row.method} keeps {min(kept, lost):.1f} of the {lost:.1f} {unit} that plain "
                f"SVD {verb}: {quality}."
            )
        else:
            lines.append(f"{where}, plain SVD loses nothing against dense; {quality}.")
    if dense is not None:
        size = f"{format_bytes(row.size_bytes)} on disk against {format_bytes(dense.get('size_bytes'))} dense" + (
            f" ({row.size_bytes / dense['size_bytes']:.0%})"
            if row.size_bytes and number(dense.get("size_bytes"))
            else ""
        )
        latency = (
            f"{format_ms(row.latency_ms_b1)} at batch 1 and {format_ms(row.latency_ms_b32)} at batch 32 "
            f"(dense {format_ms(dense.get('latency_ms_b1'))} and {format_ms(dense.get('latency_ms_b32'))})"
        )
        note = row.latency_note
        lines.append(
            f"The {row.method} model is {size}; it runs in {latency}" + (f"; measured {note}" if note else "") + "."
        )
        slower = slower_sentence(row, dense)
        if slower:
            lines.append(slower)
    speed = throughput_sentence(row.throughput)
    if speed:
        lines.append(speed)
    if row.destroyed:
        lines.append(f"Warning: even the best stored method destroys the model at {row.budget:.0%}: {row.destroyed}.")
    elif row.svd_destroyed and row.method != BASELINE:
        lines.append(f"Plain SVD destroys the model at {row.budget:.0%}: {row.svd_destroyed}.")
    drop = _drop_sentence(s)
    return lines + ([drop] if drop else [])


def slower_sentence(row: SummaryRow, dense: dict) -> str | None:
    """Why ``row``'s model reads slower than dense (by more than :data:`SLOWER_RATIO`) at a batch size, or ``None``.

    A factorized layer does ``r (out + in)`` multiply-adds per token instead of ``out in``, so the linear layers do
    ``kept_fraction`` of the dense work; a slower measurement then comes from running two thin matrix products
    where one wide one ran (each with its own memory traffic and per-call overhead), which costs more per
    multiply-add at small batches and small ranks than the work saved. The numbers are the run's own (measured
    under the conditions recorded with them, which are re-measured when they disagree with dense's)."""
    slower = [
        f"batch {b}"
        for b, mine, theirs in (
            (1, row.latency_ms_b1, dense.get("latency_ms_b1")),
            (32, row.latency_ms_b32, dense.get("latency_ms_b32")),
        )
        if number(mine) is not None and number(theirs) is not None and float(mine) > SLOWER_RATIO * float(theirs)
    ]
    if not slower:
        return None
    work = (
        f"{row.kept_fraction:.0%} of the dense multiply-adds in its linear layers"
        if row.kept_fraction
        else "fewer multiply-adds in its linear layers"
    )
    return (
        f"It reads slower than dense at {' and '.join(slower)} although it does {work}: each factorized layer runs "
        "two thin matrix products where the dense model runs one wide one, and at this batch size and rank their "
        "per-call overhead and memory traffic cost more than the work saved (a larger batch, fewer and larger "
        "ranks, or keeping small layers dense helps)."
    )
