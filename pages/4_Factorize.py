"""Factorize: run one or more registered methods on the current rank plan (a progress bar per method,
advancing layer by layer), compare quality, size and latency with the dense model, inspect solver
convergence, save the compressed model and download it as a zip."""

from __future__ import annotations

import functools
import re

import pandas as pd
import streamlit as st

import lowrank
from dashboard import cache, labels, plots, session, widgets  # first: sets up the environment for torch
from dashboard.progress import ProgressBar
from lowrank.experiments.run import execute_run
from lowrank.io import cache_dir
from lowrank.needs import needs_for

st.title("Factorize")
model, task = session.model_key(), session.task_key()
try:
    loaded = cache.load(model, task)
    task_obj = cache.get_task(task)
    plan = session.ensure_plan()
except widgets.USER_ERRORS as err:
    widgets.show_error(f"Cannot factorize {labels.model_label(model)}", err)
    st.page_link("pages/1_Model_and_task.py", label="Choose another model", icon=":material/dataset:")
    st.stop()

edited = bool(plan.meta.get("edited"))
st.markdown(f"Plan: **{labels.plan_fraction(plan):.0%}** of the compressible parameters kept, strategy **{plan.strategy}**"
            f"{' (edited by hand)' if edited else ''}, {len(plan.ranks)} of {len(plan.layers)} layers factorized.")
st.page_link("pages/3_Ranks.py", label="Change the plan", icon=":material/tune:")

methods = lowrank.available_methods()
chosen = st.multiselect("Methods", methods, default=[m for m in ("svd", "fwsvd") if m in methods],
                        format_func=labels.method_label, key="factorize_methods")
options = {}
if chosen:
    cols = st.columns(len(chosen))
    for col, method in zip(cols, chosen):
        with col.container(border=True):
            st.markdown(f"**{method}**")
            st.caption(lowrank.get_method(method).description)
            options[method] = widgets.option_widgets(method, "factorize")
run = st.button("Factorize and evaluate", type="primary", icon=":material/play_arrow:", disabled=not chosen)

if run:
    if not plan.ranks:
        st.error("The plan keeps every layer dense: nothing to factorize. Lower the budget on the Ranks page.",
                 icon=":material/error:")
        st.stop()
    results = []
    try:
        cache.dense_evaluation(model, task, session.eval_limit())
        stats = cache.statistics(model, task, needs_for(chosen))
    except widgets.USER_ERRORS as err:
        widgets.show_error("Cannot prepare the run", err)
        st.stop()
    fields = {"strategy": "manual" if edited else plan.strategy, "budget": plan.budget / plan.dense_params,
              "align": plan.align}
    for method in chosen:
        with ProgressBar(f"{method}", keep=True, done_text=f"{method}: factorized and evaluated") as bar:
            try:
                result = execute_run(cache.store(), loaded, task_obj, task, method, plan.ranks, stats=stats,
                                     options=options[method], eval_limit=session.eval_limit(), fields=fields, progress=bar)
            except widgets.USER_ERRORS as err:
                widgets.show_error(f"{method} failed (recorded as a failed run)", err)
                continue
        results.append({"run_id": result.run_id, "method": method, "model": result.model, "saved": None})
    st.session_state["results"] = results

results = st.session_state["results"]
if not results:
    st.stop()

store = cache.store()
dense = cache.dense_evaluation(model, task, session.eval_limit())
rows = [store.get_run(r["run_id"]) for r in results]
table = pd.DataFrame([dense, *rows])
table["label"] = ["dense"] + [f"{r['method']} {' '.join(f'{k}={v}' for k, v in (r['options'] or {}).items())}".strip()
                              for r in rows]
table["delta"] = table["value"] - dense["value"]

for r in results:
    regularized = r["model"].model.lowrank_info.regularizers()
    if regularized:
        st.caption(f"{r['method']}: numerical regularizers of the second-moment roots: "
                   + ", ".join(f"{label} in {n} layer(s)" for label, n in regularized.items()))

st.subheader("Before and after")
cols = st.columns(len(rows) + 1)
cols[0].metric(f"dense {dense['metric']}", labels.fmt_metric(dense["metric"], dense["value"]),
               help=f"{labels.fmt_bytes(dense['size_bytes'])}, {labels.fmt_ms(dense['latency_ms_b1'])} at batch 1")
for col, row in zip(cols[1:], rows):
    col.metric(row["method"], labels.fmt_metric(row["metric"], row["value"]),
               f"{row['value'] - dense['value']:+.3f}", delta_color="inverse" if row["metric"] == "perplexity" else "normal",
               help=f"run #{row['id']}: {labels.fmt_bytes(row['size_bytes'])}, {labels.fmt_ms(row['latency_ms_b1'])} at batch 1")
st.dataframe(
    table[["label", "value", "delta", "params_linear", "params_total", "size_bytes", "latency_ms_b1", "latency_ms_b32",
           "factorize_s", "wall_s", "id"]],
    hide_index=True,
    column_config={
        "label": st.column_config.TextColumn("model"),
        "value": st.column_config.NumberColumn(dense["metric"], format="%.4f"),
        "delta": st.column_config.NumberColumn("Δ vs dense", format="%+.4f"),
        **widgets.RUN_COLUMNS,
        "factorize_s": st.column_config.NumberColumn("factorize (s)", format="%.2f"),
        "id": st.column_config.NumberColumn("run"),
    })

histories = [(r, r["model"].model.lowrank_info.history) for r in results if r["model"].model.lowrank_info.history]
if histories:
    st.subheader("Convergence of iterative solvers")
    for result, history in histories:
        solver = (store.get_run(result["run_id"])["options"] or {}).get("solver", "")
        st.plotly_chart(plots.convergence_figure(history, f"{result['method']} {solver}: weighted error per iteration"),
                        key=f"convergence_{result['run_id']}")

st.subheader("Save and download")
for result in results:
    cols = st.columns([2, 3], vertical_alignment="center")
    folder = cache_dir() / "compressed" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', labels.model_label(model))}-{result['method']}-run{result['run_id']}"
    if cols[0].button(f"Save {result['method']} model", key=f"save_{result['run_id']}", icon=":material/save:",
                      disabled=result["saved"] is not None):
        try:
            lowrank.save_compressed(result["model"], folder)
        except widgets.USER_ERRORS as err:
            widgets.show_error(f"Cannot save {result['method']}", err)
        else:
            store.update_run(result["run_id"], output_dir=str(folder))
            result["saved"] = str(folder)
    if result["saved"] is not None:
        cols[1].download_button(f"Download {folder.name}.zip", functools.partial(widgets.zip_folder, result["saved"]),
                                file_name=f"{folder.name}.zip", mime="application/zip", on_click="ignore",
                                icon=":material/download:", key=f"download_{result['run_id']}")
        st.caption(f"Saved to `{result['saved']}` (load it with `lowrank.load_compressed`).")
