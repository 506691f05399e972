"""The summary of one model and task (:mod:`lowrank.report.summarize`) as a figure and as an HTML report.

:func:`summary_figure` draws quality against size on disk, one line per method and the dense model as a star.
:func:`render_html` makes one self-contained HTML file: the headlines, the table per budget, the figures
(plotly.js inline once, so the file opens offline; each chart's camera button downloads it as PNG),
the runs compared, the methods' settings, the date and the software versions. :func:`write_report` writes it
atomically and replaces an existing file only when it is a report of ours (:data:`GENERATOR` in its head).
"""

from __future__ import annotations

import html
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lowrank.evaluation.latency import latency_note
from lowrank.experiments.compare import DENSE
from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.outputs import writable_file
from lowrank.report.formats import format_bytes, format_metric, format_ms, number
from lowrank.report.summarize import Summary

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


def summary_figure(s: Summary) -> go.Figure:
    """Quality against size on disk: one line per method (every stored budget), the dense model as a star;
    hover shows the budget and the measured latencies."""
    metric = s.metric or "value"
    fig = go.Figure()
    compressed = s.runs[s.runs["method"] != DENSE].sort_values("size_bytes") if len(s.runs) else s.runs
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
        size = number(d.get("size_bytes"))
        fig.add_trace(
            go.Scatter(
                x=[None if size is None else size / 1e6],
                y=[d["value"]],
                mode="markers",
                name="dense",
                marker=dict(symbol="star", size=14, color="gray"),
                customdata=[[number(d.get("latency_ms_b1")), number(d.get("latency_ms_b32"))]],
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
    compressed = s.runs[s.runs["method"] != DENSE] if len(s.runs) else s.runs
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
    evaluated = (
        f"{s.metric or '–'} on the {s.split or '–'} split"
        + (f", first {s.eval_limit} batches" if s.eval_limit else ", whole split")
        + (f"; {s.protocol}" if s.protocol else "")
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
        *(
            [
                "<h2>Generations side by side</h2>",
                _table(s.generations),
                '<p class="note">The same prompts, greedy decoding, the same number of new tokens.</p>',
            ]
            if s.generations is not None and len(s.generations)
            else []
        ),
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
    file is replaced only when it is a report of ours (:func:`lowrank.files.outputs.writable_file`)."""
    path = writable_file(path, is_report)
    atomic_write_bytes(path, render_html(s, [summary_figure(s)] if figures is None else figures).encode("utf-8"))
    return path
