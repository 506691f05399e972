"""Factorize: run one or more registered methods on the current rank plan in the background (a one-budget
sweep with the plan's ranks, so leaving or reloading the page loses nothing), optionally healing each compressed
model toward the dense one, then compare quality, size and latency with the dense model, read a causal LM's
generations beside the dense model's, inspect solver convergence and download the compressed models."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import streamlit as st

import lowrank
from dashboard import (
    cache,
    generations,
    layout,
    names,
    plots,
    session,
    widgets,
)  # first: sets up the environment for torch
from lowrank.evaluation.latency import latency_note
from lowrank.experiments.compare import DENSE, metric_info, shown_methods, sweep_reference
from lowrank.experiments.sweep import SweepSpec, start_sweep
from lowrank.needs import needs_for
from lowrank.report import formats
from lowrank.statistics import needs_task

LABEL = "factorize"  # the sweeps this page starts

layout.header(__file__)
model, task = session.model_key(), session.task_key()
with widgets.stop_on_error(f"Cannot factorize {names.model_label(model)}", choose_model=True):
    loaded = cache.load(model, task)
    plan = session.ensure_plan()
store = cache.store()


def latest_run() -> dict | None:
    """The newest run this page started for the current model and task (from the store: survives a reload)."""
    sweeps = store.sweeps()
    for sweep in sweeps[sweeps["label"] == LABEL].to_dict("records"):
        if sweep["spec"].get("model") == model and sweep["spec"].get("task") == task:
            return sweep
    return None


edited = bool(plan.meta.get("edited"))
st.markdown(
    f"Plan: **{names.plan_fraction(plan):.0%}** of the compressible parameters kept, strategy **{plan.strategy}**"
    f"{' (edited by hand)' if edited else ''}, {len(plan.ranks)} of {len(plan.layers)} layers factorized."
)
layout.link("ranks", "Change the plan")

methods, default = widgets.method_choices(loaded)
chosen = st.multiselect(
    "Methods",
    methods,
    default=default,
    format_func=names.method_label,
    key="factorize_methods",
)
options = {}
if chosen:
    cols = st.columns(len(chosen))
    for col, method in zip(cols, chosen):
        with col.container(border=True):
            st.markdown(f"**{method}**")
            st.caption(lowrank.get_method(method).description)
            options[method] = widgets.option_widgets(method, "factorize")
statistics = {}
if needs_task(needs_for(chosen)):
    statistics = widgets.calibration_widgets(task, "factorize")
healing = widgets.healing_widgets(loaded, "factorize")
current = latest_run()
running = current is not None and current["status"] == "running"
run = st.button(
    "Factorize and evaluate",
    type="primary",
    icon=":material/play_arrow:",
    disabled=not chosen or running,
    help="Runs in the background: you can leave or reload this page" + (" (one run at a time)" if running else ""),
)

if run:
    if not plan.ranks:
        st.error(
            "The plan keeps every layer dense: nothing to factorize. Lower the budget on the Ranks page.",
            icon=":material/error:",
        )
        st.stop()
    spec = SweepSpec(
        model=model,
        task=task,
        methods=list(chosen),
        budgets=[plan.budget / plan.dense_params],
        strategy="manual" if edited else plan.strategy,
        align=plan.align,
        eval_limit=session.eval_limit(),
        options={m: options[m] for m in chosen if options.get(m)},
        label=LABEL,
        ranks={name: int(rank) for name, rank in plan.ranks.items()},
        save=True,
        statistics=statistics,
        healing=healing,
    )
    with widgets.stop_on_error("Cannot start the run"):
        start_sweep(spec, store)
    st.rerun()

if current is None:
    st.stop()


@st.fragment(run_every=widgets.POLL_S if running else None)
def progress() -> None:
    sweep = store.get_sweep(int(current["id"]))
    if running and sweep["status"] != "running":
        st.rerun()  # finished: draw the results once, stop polling
    widgets.sweep_card(store, sweep)


progress()
if running:
    st.caption("The run goes on in the background when you leave this page; its results appear here when it is done.")
    st.stop()

spec = current["spec"]
runs = store.runs(sweep_id=int(current["id"]))
compressed = runs[runs["method"] != DENSE]
for row in compressed[compressed["status"] != "done"].to_dict("records"):
    st.warning(
        f"{row['method']}: {row['status']}: {row['error'] if pd.notna(row['error']) else 'no message'}",
        icon=":material/warning:",
    )
rows = shown_methods(compressed[compressed["status"] == "done"]).iloc[::-1].to_dict("records")  # in run order
if not rows:
    st.stop()
for row in rows:
    if isinstance(row.get("healing"), dict):
        h = row["healing"]
        trained = [f"{h['config']['block_steps']} step(s) per block"] if h["level"] != "end-to-end" else []
        trained += [f"{h['steps']} end-to-end step(s)"] if h["level"] != "block" else []
        st.caption(
            f"{row['method']}: {h['level']} healing, {', then '.join(trained)}, {h['seconds']:.0f} s; "
            f"held-out KL to the dense model {h['heldout_before']:.4g} → {h['heldout_after']:.4g}"
            + (" (no step improved it: the unhealed factors are kept)" if h["kept"] == "unhealed" else "")
        )
dense = sweep_reference(store, spec, compressed[compressed["status"] == "done"])
if dense is None:
    st.warning("The dense reference of this run is no longer in the run store.", icon=":material/warning:")
    st.stop()
flagged = widgets.destroyed_runs(compressed, dense, spec["task"])
widgets.destroyed_warning(compressed, flagged)

infos = {row["id"]: cache.compression_info(row["output_dir"]) if pd.notna(row["output_dir"]) else None for row in rows}
for row in rows:
    regularized = infos[row["id"]].regularizers() if infos[row["id"]] else {}
    if regularized:
        st.caption(
            f"{row['method']}: numerical regularizers of the second-moment roots: "
            + ", ".join(f"{label} in {n} layer(s)" for label, n in regularized.items())
        )

st.subheader("Before and after")
untrained = widgets.untrained_head_warning(model, task)
if isinstance(dense.get("protocol"), str):
    st.caption(f"{dense['metric'].capitalize()} of dense and compressed measured the same way: {dense['protocol']}.")
cols = st.columns(len(rows) + 1)
cols[0].metric(
    f"dense {names.quality_label(dense['metric'], untrained).lower()}",
    formats.format_metric(dense["metric"], dense["value"]),
    help=f"{formats.format_bytes(dense['size_bytes'])}, {formats.format_ms(dense['latency_ms_b1'])} at batch 1 "
    f"({names.latency_help(dense.get('latency_info'), 'b1')})",
)
for col, row in zip(cols[1:], rows):
    value = row["value"]
    col.metric(
        row["method"] + (" ✕ destroyed" if row["id"] in flagged else ""),
        formats.format_metric(row["metric"], value),
        "–" if pd.isna(value) else f"{value - dense['value']:+.3g}",
        delta_color="normal" if metric_info(row["metric"]).higher_is_better else "inverse",
        help=f"run #{row['id']}: {formats.format_bytes(row['size_bytes'])}, "
        f"{formats.format_ms(row['latency_ms_b1'])} at batch 1 ({names.latency_help(row.get('latency_info'), 'b1')})",
    )
table = pd.DataFrame([dense, *rows])
table["label"] = ["dense"] + [
    f"{r['method']} {' '.join(f'{k}={v}' for k, v in (r['options'] or {}).items())}".strip() for r in rows
]  # options: always a JSON object in the store
table["delta"] = table["value"] - dense["value"]
table["destroyed"] = [""] + [flagged.get(r["id"], "") for r in rows]
st.dataframe(
    table[
        [
            "label",
            "value",
            "delta",
            "params_linear",
            "params_total",
            "size_bytes",
            "latency_ms_b1",
            "latency_ms_b32",
            "factorize_s",
            "wall_s",
            "id",
            "destroyed",
        ]
    ],
    hide_index=True,
    column_config={
        "label": st.column_config.TextColumn("model"),
        "value": st.column_config.NumberColumn(dense["metric"], format="%.4g"),
        "delta": st.column_config.NumberColumn("Δ vs dense", format="%+.4g"),
        **widgets.RUN_COLUMNS,
        "factorize_s": st.column_config.NumberColumn("factorize (s)", format="%.2f"),
        "id": st.column_config.NumberColumn("run"),
        "destroyed": st.column_config.TextColumn("destroys the model?"),
    },
)
st.caption(
    "How the batch-32 latencies were measured: "
    + "; ".join(
        f"**{label}** {latency_note(r.get('latency_info'), 'b32') or 'not recorded'}"
        for label, r in zip(table["label"], [dense, *rows])
    )
    + ". The dense latency is measured again before a run when the conditions (load, threads) have changed."
)

histories = [(row, infos[row["id"]].history) for row in rows if infos[row["id"]] and infos[row["id"]].history]
if histories:
    st.subheader("Convergence of iterative solvers")
    for row, history in histories:
        solver = (row["options"] if isinstance(row["options"], dict) else {}).get("solver", "")
        st.plotly_chart(
            plots.convergence_figure(history, f"{row['method']} {solver}: weighted error per iteration"),
            key=f"convergence_{row['id']}",
        )

if loaded.kind == "causal-lm":
    saved = {
        f"{row['method']} (run #{row['id']})": str(row["output_dir"])
        for row in rows
        if pd.notna(row["output_dir"]) and Path(row["output_dir"]).exists()
    }
    generations.view(model, task, saved, "factorize_generations")

st.subheader("Download")
for row in rows:
    folder = Path(row["output_dir"]) if pd.notna(row["output_dir"]) else None
    if folder is None or not folder.exists():
        st.caption(f"{row['method']}: not saved ({row['error'] if pd.notna(row['error']) else 'the folder is gone'}).")
        continue
    st.download_button(
        f"Download {folder.name}.zip",
        functools.partial(widgets.zip_folder, folder),
        file_name=f"{folder.name}.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/download:",
        key=f"download_{row['id']}",
    )
st.caption(
    "Each compressed model is saved in the cache (`compressed/` next to the run store); load one with "
    "`lowrank.load_compressed`."
)
