"""The decoder demo on Home: a causal LM (:func:`demo_model`) on the Lee corpus, the recommended method
(:data:`lowrank.methods.RECOMMENDED`) at :data:`DEMO_BUDGETS` of the compressible parameters kept under the default
(uniform) ranks, run in the background as a sweep that saves its models (the job machinery of the encoder demo), then
perplexity and generations side by side against dense.

Sized for a target of 10 minutes on 2 CPU cores on smollm2-135m (measured by ``benchmarks/dashboard.py
--decoder-demo``): a calibration sample of :data:`CALIBRATION` and :data:`EVAL_LIMIT` validation batches.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from lowrank.allocation import DEFAULT_STRATEGY
from lowrank.experiments.compare import DENSE, metric_info, sweep_reference
from lowrank.experiments.sweep import SweepSpec, start_sweep
from lowrank.methods import RECOMMENDED
from lowrank.report import formats

from . import cache, generations, names, widgets

DEMO_LABEL = "demo-decoder"
DEMO_TASK = "lee"
DEMO_METHODS = (RECOMMENDED,)
DEMO_BUDGETS = (0.8, 0.6)
DEMO_STRATEGY = DEFAULT_STRATEGY
CALIBRATION = {"num_batches": 8, "batch_size": 8}  # 64 sequences of up to 128 tokens
EVAL_LIMIT = 16  # validation batches of the perplexity


def demo_model() -> str:
    """``LOWRANK_DEMO_DECODER`` (tests point it at a tiny Llama), else ``smollm2-135m``; read on every call."""
    return os.environ.get("LOWRANK_DEMO_DECODER") or "smollm2-135m"


def demo_spec(model: str) -> SweepSpec:
    return SweepSpec(
        model=model,
        task=DEMO_TASK,
        methods=list(DEMO_METHODS),
        budgets=list(DEMO_BUDGETS),
        strategy=DEMO_STRATEGY,
        eval_limit=EVAL_LIMIT,
        label=DEMO_LABEL,
        statistics=dict(CALIBRATION),
        save=True,
    )


def section() -> None:
    """The decoder demo's description, its button and its latest results."""
    st.subheader("Decoder demo")
    model = demo_model()
    kept = " and ".join(f"{b:.0%}" for b in DEMO_BUDGETS)
    st.markdown(
        f"One click on **{names.model_label(model)}**, a causal language model: {', '.join(DEMO_METHODS)} keeping "
        f"{kept} of the compressible parameters ({DEMO_STRATEGY} ranks), then perplexity on "
        f"{names.task_label(DEMO_TASK)} and the same prompts through the dense and compressed models. Runs in the "
        "background; timings in `docs/results/dashboard.md`."
    )
    store = cache.store()
    running = bool((store.sweeps(status="running")["label"] == DEMO_LABEL).any())
    if st.button("Run the decoder demo", icon=":material/play_arrow:", disabled=running, key="decoder_demo_run"):
        with widgets.stop_on_error("Decoder demo"):
            cache.check_pair(model, DEMO_TASK)
            start_sweep(demo_spec(model), store)
        st.rerun()
    results()


def results() -> None:
    """Live progress of the latest decoder demo, then its perplexities and generations against dense."""
    store = cache.store()
    latest = widgets.follow_sweep(store, DEMO_LABEL)
    if latest is None or latest["status"] == "running":
        return
    sweep_id = int(latest["id"])
    spec = store.get_sweep(sweep_id)["spec"]
    runs = store.runs(sweep_id=sweep_id, status="done")
    compressed = runs[runs["method"] != DENSE].sort_values("budget", ascending=False)
    if compressed.empty:
        return
    dense = sweep_reference(store, spec, runs)
    rows = compressed.to_dict("records")
    cols = st.columns(len(rows) + 1)
    if dense is not None:
        cols[0].metric(f"dense {dense['metric']}", formats.format_metric(dense["metric"], dense["value"]))
    for col, row in zip(cols[1:], rows):
        col.metric(
            f"{row['method']} at {row['budget']:.0%}",
            formats.format_metric(row["metric"], row["value"]),
            None if dense is None else f"{row['value'] - dense['value']:+.3g} vs dense",
            delta_color="normal" if metric_info(row["metric"]).higher_is_better else "inverse",
            help=f"run #{row['id']}; {row['metric']} on the first {spec['eval_limit']} validation batches",
        )
    saved = {
        f"{row['method']} at {row['budget']:.0%}": str(row["output_dir"])
        for row in rows
        if pd.notna(row["output_dir"]) and os.path.isdir(row["output_dir"])
    }
    with widgets.stop_on_error("Cannot load the demo's models"):
        generations.view(spec["model"], spec["task"], saved, "decoder_demo_generations", start=True)
