"""The result story of one model and task, from the stored runs only: :func:`summary` picks the best method at
each budget and compares it with the dense model and with plain SVD (quality, size on disk, measured latency);
:func:`summary_figure` draws quality against size; :func:`render_html` makes a self-contained HTML report
(plotly.js inline once, so it opens offline) and :func:`write_report` writes it atomically.

Which runs. The newest finished dense run of the model and task is the reference; compressed runs count when
they were measured on the same split with the same evaluation limit. Of several runs of one method at one
budget (e.g. two strategies), the newest counts. Nothing is measured here; :func:`with_drop_checks` adds the
SVD-drop metric's prediction for each stored plain-SVD run (from its ranks, the weights and the Fisher), next to
what that run measured.

The dashboard's Summary page and ``lowrank report`` both use this module; the number formats here are the
dashboard's too (:mod:`dashboard.labels` re-exports them).
"""

from __future__ import annotations

import html
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lowrank.analysis.metrics import risk_summary, risk_table
from lowrank.evaluation.latency import latency_note
from lowrank.evaluation.quality import chance_accuracy, destroyed
from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.outputs import writable_file

BASELINE = "svd"  # plain SVD: what the weighted methods are compared with
HEADLINE_BUDGET = 0.5  # the budget the headline figures are taken at (the nearest stored one)
SLOWER_RATIO = 1.1  # a compressed model "reads slower" than dense above this multiple of dense's latency
GENERATOR = "lowrank-studio report"  # marks an HTML file as ours (write_report replaces only those)
VERSIONED = ("lowrank-studio", "torch", "transformers", "plotly", "pandas", "numpy")
RUN_TABLE_COLUMNS = (
    "id",
    "method",
    "solver",
    "strategy",
    "budget",
    "kept_fraction",
    "metric",
    "value",
    "params_linear",
    "size_bytes",
    "latency_ms_b1",
    "latency_ms_b32",
    "created",
)


# ---------------------------------------------------------------- number formats (shared with the dashboard)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_metric(metric: str | None, value) -> str:
    if _missing(value):
        return "–"
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def format_bytes(n) -> str:
    return "–" if _missing(n) else f"{float(n) / 1e6:.1f} MB"


def format_ms(v) -> str:
    return "–" if _missing(v) else f"{float(v):.1f} ms"


# ---------------------------------------------------------------- the summary


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
    destroyed: str | None = None  # why the best run destroys the model (lowrank.evaluate.destroyed), or None
    svd_destroyed: str | None = None  # the same for plain SVD's run

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

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "perplexity"

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


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _difference(a, b) -> float | None:
    a, b = _number(a), _number(b)
    return None if a is None or b is None else a - b


def _mb(n) -> float | None:
    n = _number(n)
    return None if n is None else n / 1e6


def _same(column: pd.Series, value) -> pd.Series:
    return column.isna() if _missing(value) else column == value


def summary(store, model: str, task: str) -> Summary:
    """The best method at each budget of ``model`` on ``task`` from the finished runs in ``store`` (a
    :class:`lowrank.experiments.store.RunStore`), against the dense model and plain SVD (see the module docstring)."""
    runs = store.runs(model=model, task=task, status="done")
    runs = runs[runs["value"].notna()]
    dense_runs = runs[runs["method"] == "dense"]
    dense = dense_runs.iloc[0].to_dict() if len(dense_runs) else None
    compressed = runs[(runs["method"] != "dense") & runs["budget"].notna()]
    reference = dense if dense is not None else (compressed.iloc[0].to_dict() if len(compressed) else None)
    if reference is not None:
        compressed = compressed[
            _same(compressed["split"], reference["split"]) & _same(compressed["eval_limit"], reference["eval_limit"])
        ]
    compressed = compressed.assign(budget=compressed["budget"].round(4)).drop_duplicates(["method", "budget"])
    metric = reference["metric"] if reference is not None else None
    higher = metric != "perplexity"
    chance = _chance(task, reference["split"]) if len(compressed) and metric == "accuracy" else None

    def ruined(value) -> str | None:
        return destroyed(metric, value, None if dense is None else _number(dense["value"]), chance)

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
                kept_fraction=_number(best["kept_fraction"]),
                size_bytes=_int(best["size_bytes"]),
                latency_ms_b1=_number(best["latency_ms_b1"]),
                latency_ms_b32=_number(best["latency_ms_b32"]),
                latency_note=latency_note(best["latency_info"] if isinstance(best["latency_info"], dict) else None),
                svd_value=svd_value,
                svd_run_id=int(svd["id"].iloc[0]) if len(svd) else None,
                destroyed=ruined(float(best["value"])),
                svd_destroyed=None if svd_value is None else ruined(svd_value),
            )
        )
    shown = pd.concat([frame for frame in (dense_runs.iloc[:1], compressed) if len(frame)]) if len(runs) else runs
    result = Summary(
        model=model,
        task=task,
        metric=metric,
        split=None if reference is None else reference["split"],
        eval_limit=None if reference is None else _int(reference["eval_limit"]),
        dense=dense,
        rows=tuple(rows),
        runs=shown,
        created=time.time(),
    )
    return replace(result, headlines=tuple(headlines(result)))


def _chance(task: str, split: str) -> float | None:
    """:func:`lowrank.evaluate.chance_accuracy` of the stored task key, ``None`` when the task cannot be read now."""
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
    value = _number(value)
    return None if value is None else int(value)


def headlines(s: Summary) -> list[str]:
    """Plain sentences on the headline row (:attr:`Summary.headline`): quality against dense and plain SVD,
    then size and latency against dense."""
    row, dense = s.headline, s.dense
    if row is None:
        return []
    metric = s.metric or "value"
    where = f"At {row.budget:.0%} of the compressible parameters"
    d = _number((dense or {}).get("value"))
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
            if row.size_bytes and _number(dense.get("size_bytes"))
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
        if _number(mine) is not None and _number(theirs) is not None and float(mine) > SLOWER_RATIO * float(theirs)
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


# ---------------------------------------------------------------- the chart


def summary_figure(s: Summary) -> go.Figure:
    """Quality against size on disk: one line per method (every stored budget), the dense model as a star;
    hover shows the budget and the measured latencies."""
    metric = s.metric or "value"
    fig = go.Figure()
    compressed = s.runs[s.runs["method"] != "dense"].sort_values("size_bytes") if len(s.runs) else s.runs
    for method, group in compressed.groupby("method", sort=True):
        fig.add_trace(
            go.Scatter(
                x=group["size_bytes"] / 1e6,
                y=group["value"],
                mode="lines+markers",
                name=str(method),
                customdata=np.stack(
                    [
                        group["budget"],
                        group["latency_ms_b1"].astype(float),
                        group["latency_ms_b32"].astype(float),
                        group["id"],
                    ],
                    axis=1,
                ),
                hovertemplate=(
                    f"{method}<br>budget %{{customdata[0]:.0%}}<br>%{{x:.1f}} MB<br>{metric} %{{y:.4f}}<br>"
                    "latency %{customdata[1]:.1f} ms (batch 1), %{customdata[2]:.1f} ms (batch 32)"
                    "<br>run #%{customdata[3]}<extra></extra>"
                ),
            )
        )
    if s.dense is not None:
        d = s.dense
        fig.add_trace(
            go.Scatter(
                x=[_mb(d.get("size_bytes"))],
                y=[d["value"]],
                mode="markers",
                name="dense",
                marker=dict(symbol="star", size=14, color="gray"),
                customdata=[[_number(d.get("latency_ms_b1")), _number(d.get("latency_ms_b32"))]],
                hovertemplate=(
                    f"dense<br>%{{x:.1f}} MB<br>{metric} %{{y:.4f}}<br>latency %{{customdata[0]:.1f}} ms "
                    "(batch 1), %{customdata[1]:.1f} ms (batch 32)<extra></extra>"
                ),
            )
        )
    fig.update_xaxes(title="size on disk (MB)")
    fig.update_yaxes(title=metric + ("" if s.higher_is_better else " (lower is better)"))
    fig.update_layout(
        title=dict(text=f"{metric.capitalize()} against size on disk", x=0, xanchor="left"),
        height=440,
        margin=dict(l=10, r=10, t=50, b=10),
        hoverlabel=dict(namelength=-1),
    )
    return fig


# ---------------------------------------------------------------- the HTML report


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages the results depend on."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0, classes="runs")


def _settings(s: Summary) -> pd.DataFrame:
    compressed = s.runs[s.runs["method"] != "dense"] if len(s.runs) else s.runs
    rows = []
    for method, group in compressed.groupby("method", sort=True):
        options = sorted({str(o) for o in group["options"] if isinstance(o, dict) and o})
        rows.append(
            {
                "method": method,
                "solver": ", ".join(sorted(group["solver"].dropna().astype(str).unique())) or "–",
                "strategies": ", ".join(sorted(group["strategy"].dropna().astype(str).unique())) or "–",
                "options": "; ".join(options) or "defaults",
                "budgets": ", ".join(f"{b:.0%}" for b in sorted(group["budget"].dropna().unique())),
            }
        )
    return pd.DataFrame(rows)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:0.9em}
li{margin:0.4em 0}"""


def render_html(s: Summary, figures: Sequence[go.Figure]) -> str:
    """A self-contained HTML report of ``s``: headlines, the table per budget, ``figures`` (plotly.js embedded
    inline once: the file opens offline; each chart's camera button downloads it as PNG), the runs compared,
    the methods' settings, the date and the software versions."""
    e = html.escape
    title = f"Compression summary: {s.model} on {s.task}"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(s.created or time.time()))
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    charts = [
        fig.to_html(full_html=False, include_plotlyjs=index == 0, config=config) for index, fig in enumerate(figures)
    ]
    dense = s.dense or {}
    evaluated = f"{s.metric or '–'} on the {s.split or '–'} split" + (
        f", first {s.eval_limit} batches" if s.eval_limit else ", whole split"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR}">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="note">Written {e(when)} from the stored runs; {e(evaluated)}.</p>',
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in s.headlines) + "</ul>"
        if s.headlines
        else "<p>No finished compressed runs of this model and task yet.</p>",
        "<h2>Best method at each budget</h2>",
        _table(s.table()) if s.rows else "<p>–</p>",
        f'<p class="note">Dense: {e(s.metric or "value")} {e(format_metric(s.metric, dense.get("value")))}, '
        f"{e(format_bytes(dense.get('size_bytes')))}, {e(format_ms(dense.get('latency_ms_b1')))} at batch 1, "
        f"{e(format_ms(dense.get('latency_ms_b32')))} at batch 32"
        + (f" ({e(latency_note(dense.get('latency_info')))})" if isinstance(dense.get("latency_info"), dict) else "")
        + ". Latency: forward pass on the CPU.</p>",
        *charts,
        *(["<h2>The SVD-drop metric: predicted and measured</h2>", _table(s.drop_table())] if s.drop_checks else []),
        '<p class="note">Each chart: hover for the budget and latencies; the camera button (top right) downloads it as PNG.</p>',
        "<h2>Runs compared</h2>",
        _table(s.runs[[c for c in RUN_TABLE_COLUMNS if c in s.runs.columns]]) if len(s.runs) else "<p>–</p>",
        "<h2>Settings</h2>",
        f"<p>Model <code>{e(s.model)}</code>, task <code>{e(s.task)}</code>, {e(evaluated)}.</p>",
        _table(_settings(s)) if len(s.runs) else "",
        "<h2>Software</h2>",
        _table(pd.DataFrame([versions()])),
        "</body></html>",
    ]
    return "\n".join(parts)


def is_report(data: bytes) -> bool:
    """True when ``data`` is an HTML report this module wrote (:data:`GENERATOR` in its head)."""
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in data[:4096]


def write_report(s: Summary, path: str | Path, figures: Sequence[go.Figure] | None = None) -> Path:
    """Write :func:`render_html` of ``s`` (default figure: :func:`summary_figure`) to ``path`` atomically; an existing
    file is replaced only when it is a report of ours (:func:`lowrank.io.writable_file`)."""
    path = writable_file(path, is_report)
    atomic_write_bytes(path, render_html(s, [summary_figure(s)] if figures is None else figures).encode("utf-8"))
    return path
