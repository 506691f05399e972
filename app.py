"""lowrank-studio dashboard, Home page and entry point (``streamlit run app.py``); the other pages are in ``pages/``."""

from __future__ import annotations

import streamlit as st

from dashboard import layout, plots, state, widgets

DEMO_METHODS = ("svd", "fwsvd")
DEMO_BUDGETS = (0.3, 0.5, 0.7)
DEMO_STRATEGY = "fisher_greedy"
DEMO_LABEL = "demo"


def run_demo() -> None:
    """Spectra -> Fisher -> budget plan -> background sweep of plain vs weighted factorization."""
    from lowrank.allocate import allocate
    from lowrank.sweep import SweepSpec, start_sweep

    model, task = state.default_model(), state.default_task()
    state.set_model(model)
    state.set_task(task)
    with st.status(f"Stakeholder demo on {state.model_label(model)} · {state.task_label(task)}", expanded=True) as status:
        try:
            st.write("1/4 Singular-value spectra of every compressible layer")
            frame = state.spectra(model, task)
            st.write(f"{len(frame)} layers; median effective rank {frame['effective_rank'].median():.0f} "
                     f"of {int(frame[['out', 'in']].min(axis=1).median())}")
            st.write("2/4 Fisher information (which weights matter for the task)")
            importance = state.fisher(model, task)
            st.write(f"3/4 Budget plan: {DEMO_STRATEGY} at {state.DEFAULT_BUDGET:.0%} of the compressible parameters")
            new_plan = allocate(state.load(model, task), state.DEFAULT_BUDGET, DEMO_STRATEGY, importance=importance)
            state.set_plan(new_plan)
            st.write(f"4/4 Factorization sweep in the background: {', '.join(DEMO_METHODS)} × "
                     f"{', '.join(f'{b:.0%}' for b in DEMO_BUDGETS)}")
            spec = SweepSpec(model=model, task=task, methods=list(DEMO_METHODS), budgets=list(DEMO_BUDGETS),
                             strategy=DEMO_STRATEGY, eval_limit=state.eval_limit(), label=DEMO_LABEL)
            start_sweep(spec, state.store())
        except state.USER_ERRORS as err:
            status.update(label="Demo failed", state="error")
            widgets.show_error("Demo", err)
            return
        status.update(label="Demo started: the sweep runs in the background (you can leave this page)", state="complete",
                      expanded=False)


def demo_results() -> None:
    """Live progress and trade-off plot of the latest demo sweep (polls the run store while it runs)."""
    store = state.store()
    sweeps = store.sweeps()
    demos = sweeps[sweeps["label"] == DEMO_LABEL]
    if demos.empty:
        return
    sweep_id = int(demos["id"].iloc[0])
    running = demos["status"].iloc[0] == "running"

    @st.fragment(run_every=2.0 if running else None)
    def live() -> None:
        sweep = store.get_sweep(sweep_id)
        if running and sweep["status"] != "running":
            st.rerun()  # finished: redraw the page once, without polling
        widgets.sweep_card(store, sweep)
        spec = sweep["spec"]
        runs = store.runs(sweep_id=sweep_id, status="done")
        dense = store.find_run(method="dense", model=spec["model"], task=spec["task"], split=spec["split"],
                               eval_limit=spec["eval_limit"])
        compressed = runs[runs["method"] != "dense"]
        if compressed.empty and dense is None:
            return
        st.plotly_chart(plots.tradeoff_figure(compressed, dense), key=f"demo_plot_{sweep_id}")
        if not compressed.empty and dense is not None:
            table = compressed.pivot_table(index="budget", columns="method", values="value", aggfunc="first")
            reference = widgets.fmt_metric(dense["metric"], dense["value"])
            st.markdown("\n".join(
                f"- keeping **{budget:.0%}** of the compressible parameters: "
                + ", ".join(f"{method} **{widgets.fmt_metric(dense['metric'], value)}**"
                            for method, value in row.dropna().items())
                + f" (dense {reference})" for budget, row in table.iterrows()))

    live()


def home() -> None:
    st.markdown("Compress a Transformer by replacing its Linear layers with **low-rank factors**, weighted by how much "
                "each weight matters to the task (its **Fisher information**). The workflow:")
    for number, (path, title, icon, blurb) in enumerate(layout.PAGES[1:], start=1):
        cols = st.columns([1, 3], vertical_alignment="center")
        cols[0].page_link(path, label=f"{number}. {title}", icon=icon)
        cols[1].caption(blurb)

    st.subheader("Current status")
    model, task, current_plan = state.model_key(), state.task_key(), state.plan()
    dense = state.store().find_run(method="dense", model=model, task=task)
    plan_text = ("none yet: open Ranks" if current_plan is None else
                 f"{state.plan_fraction(current_plan):.0%} kept · {current_plan.strategy} · "
                 f"{len(current_plan.ranks)} of {len(current_plan.layers)} layers factorized")
    dense_text = (f"{dense['metric']} {widgets.fmt_metric(dense['metric'], dense['value'])}" if dense
                  else "not measured yet: open Model & task")
    for col, (label, value) in zip(st.columns(4), [("Model", state.model_label(model)), ("Task", state.task_label(task)),
                                                   ("Rank plan", plan_text), ("Dense model", dense_text)]):
        with col.container(border=True, height="stretch"):
            st.caption(label)
            st.markdown(f"**{value}**")

    st.subheader("Stakeholder demo")
    st.markdown(f"One click on the default model (**{state.model_label(state.default_model())}**, "
                f"{state.task_label(state.default_task())}): spectra → Fisher information → a "
                f"{DEMO_STRATEGY} budget plan → plain SVD vs Fisher-weighted SVD at "
                f"{', '.join(f'{b:.0%}' for b in DEMO_BUDGETS)} of the parameters → the trade-off plot. "
                "About 2–4 minutes on 2 CPU cores; the factorizations run in the background and are stored.")
    if st.button("Run the demo", type="primary", icon=":material/play_arrow:"):
        run_demo()
    demo_results()


layout.setup("lowrank-studio")
home()
