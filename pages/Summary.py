"""Summary: the result of the stored runs of the current model and task in one view (lowrank.report): the best
method at each budget against dense and plain SVD, size on disk, measured latency and quality, headline sentences,
one chart, predicted against measured (per run and per layer), a causal LM's generations beside dense, and the whole as a self-contained HTML report."""

from __future__ import annotations

import functools

import streamlit as st

from dashboard import (
    agreement,
    cache,
    generations,
    layout,
    names,
    session,
    widgets,
)  # first: sets up the environment for torch
from lowrank import report
from lowrank.evaluation.harness import stored_scores
from lowrank.evaluation.throughput import figures, throughput_note
from lowrank.report import formats
from lowrank.statistics import statistics_label

layout.header(__file__)
model, task = session.model_key(), session.task_key()
result = report.summary(cache.store(), model, task)
untrained = widgets.untrained_head_warning(model, task)
st.markdown(
    f"**{names.model_label(model)}** on **{names.task_label(task)}**, from the stored runs "
    f"({len(result.runs)} compared)."
)


def harness_section() -> None:
    """The stored lm-eval-harness scores of the model, beside the dense run each compares with."""
    scores = stored_scores(cache.store(), model)
    if scores.empty:
        return
    st.subheader("lm-eval-harness scores")
    st.caption(
        "From `lowrank evaluate --harness` on the dense model and on compressed folders; each row beside the dense "
        "run measured the same way (protocol). On Trade-offs, each task and metric is a task of its own."
    )
    st.dataframe(
        scores,
        hide_index=True,
        column_config={
            "kept": st.column_config.NumberColumn("kept", format="percent"),
            "value": st.column_config.NumberColumn("value", format="%.4g"),
            "dense": st.column_config.NumberColumn("dense", format="%.4g"),
        },
    )


row = result.headline
if row is None:
    st.info(
        "No finished compressed runs of this model and task yet: run the demo on Home, or a sweep on Trade-offs.",
        icon=":material/info:",
    )
    layout.link("tradeoffs", "Start a sweep")
    harness_section()
    st.stop()

svd_runs = tuple(r.svd_run_id for r in result.rows if r.svd_run_id is not None)
checked = agreement.checked_summary(model, task)
predicted = checked is not None
result = checked or result
for line in result.headlines:
    st.markdown(f"- {line}")
flagged = [f"at {r.budget:.0%}, {r.warning}" for r in result.rows if r.warning]
if flagged:
    st.warning(
        "Destroyed models (quality at chance or perplexity far above dense): " + "; ".join(flagged) + ".",
        icon=":material/warning:",
    )
dense = result.dense or {}
metric = result.metric or "value"
if dense.get("protocol"):
    st.caption(f"{metric.capitalize()} of every run here measured the same way: {dense['protocol']}.")
cols = st.columns(4)
cols[0].metric(
    f"{row.method} {names.quality_label(metric, untrained).lower()} at {row.budget:.0%}",
    formats.format_metric(result.metric, row.value),
    None if not dense else f"{row.value - dense['value']:+.3g} vs dense",
    delta_color="normal" if result.higher_is_better else "inverse",
    help=f"run #{row.run_id}; dense {formats.format_metric(result.metric, dense.get('value'))}, plain SVD "
    f"{formats.format_metric(result.metric, row.svd_value)}",
)
cols[1].metric(
    "size on disk", formats.format_bytes(row.size_bytes), help=f"dense {formats.format_bytes(dense.get('size_bytes'))}"
)
cols[2].metric(
    "latency, batch 1",
    formats.format_ms(row.latency_ms_b1),
    help=f"dense {formats.format_ms(dense.get('latency_ms_b1'))}; forward pass on the CPU, "
    f"{row.latency_note or 'conditions not recorded'}",
)
cols[3].metric(
    "latency, batch 32",
    formats.format_ms(row.latency_ms_b32),
    help=f"dense {formats.format_ms(dense.get('latency_ms_b32'))}; forward pass on the CPU, "
    f"{row.latency_note or 'conditions not recorded'}",
)

if row.throughput and row.throughput.get("ratio"):  # causal LMs: tokens/s against dense, measured side by side
    speed = row.throughput
    keys = [k for k in figures(speed) if k in speed["ratio"]]
    for col, key in zip(st.columns(len(keys)), keys):
        kind, batch = key.split("_b")
        col.metric(
            f"{'generating' if kind == 'decode' else 'reading prompts'}, batch {batch}",
            f"{speed[key]:,.0f} tokens/s",
            f"{speed['ratio'][key]:.2f}x dense, {speed['of_bound'][key]:.0%} of the FLOP bound",
            delta_color="off",
            delta_arrow="off",
            help=f"dense {speed['dense'][key]:,.0f} tokens/s; FLOP bound {speed['bound'][key]:.2f}x "
            f"(dense FLOPs per token / this model's); {throughput_note(speed)}",
        )

figure = report.summary_figure(result)
st.plotly_chart(figure, key="summary_chart")
st.dataframe(
    result.table(),
    hide_index=True,
    column_config={
        "budget": st.column_config.NumberColumn("budget", format="percent"),
        metric: st.column_config.NumberColumn(metric, format="%.4g"),
        "vs dense": st.column_config.NumberColumn("vs dense", format="%+.4g"),
        "plain SVD": st.column_config.NumberColumn("plain SVD", format="%.4g"),
        "vs plain SVD": st.column_config.NumberColumn("vs plain SVD", format="%+.4g"),
        "size (MB)": st.column_config.NumberColumn("size (MB)", format="%.1f"),
        "latency b1 (ms)": st.column_config.NumberColumn("latency b1 (ms)", format="%.1f"),
        "latency b32 (ms)": st.column_config.NumberColumn("latency b32 (ms)", format="%.1f"),
        "destroys the model?": st.column_config.TextColumn("destroys the model?"),
    },
)
st.subheader("Did the SVD-drop metric see it coming?")
if predicted:
    st.caption(
        "The metric's whole-model prediction for each plain-SVD run (from the weights and the Fisher, without "
        "running it) next to what the run measured against dense; how well it ranks layers and models: "
        "`docs/results/predictor.md`."
    )
    st.dataframe(
        result.drop_table(),
        hide_index=True,
        column_config={
            "budget": st.column_config.NumberColumn("budget", format="percent"),
            "predicted loss increase (nats)": st.column_config.NumberColumn(format="%.3g"),
            "measured loss increase (nats)": st.column_config.NumberColumn(format="%+.3g"),
            f"measured {metric} change": st.column_config.NumberColumn(format="%+.3g"),
        },
    )
    agreement.run_section(result, "summary")
elif svd_runs:
    st.info(
        f"The metric needs the {statistics_label(cache.PREDICTION_NEEDS)} of the model on the task "
        "(one pass, cached on disk).",
        icon=":material/info:",
    )
    widgets.statistics_button(model, task, cache.PREDICTION_NEEDS)
else:
    st.caption("No plain-SVD run is stored at these budgets: nothing to compare the metric with.")

agreement.layer_section(model, task, "summary")

if cache.read_model_kind(model) == "causal-lm":
    shown = generations.view(model, task, report.saved_models(result), "summary_generations")
    if shown is not None:
        result = report.with_generations(result, shown)  # the report shows them too

harness_section()

st.download_button(
    "Export the report (HTML)",
    functools.partial(report.render_html, result, [figure]),
    file_name=f"{names.model_label(model)}-summary.html",
    mime="text/html",
    on_click="ignore",
    icon=":material/download:",
    type="primary",
)
st.caption(
    "One self-contained file (charts, runs, settings, versions; opens offline). A chart's PNG: the camera button "
    "at its top right, here and in the report. The same report from the command line: `lowrank report --model "
    "... --task ... --out report.html`."
)
