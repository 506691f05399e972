"""Home: the workflow (one link per page), the current status, and a one-click stakeholder demo
(spectra -> statistics -> budget plan -> background sweep of plain vs weighted factorization), which waits
for a trained classification head (on a first run: the default model's build in the background), and the decoder demo
(:mod:`dashboard.decoder_demo`: a causal LM compressed in the background, perplexity and generations against dense)."""

from __future__ import annotations

import streamlit as st

from dashboard import (
    cache,
    decoder_demo,
    layout,
    names,
    plots,
    session,
    widgets,
)  # first: sets up the environment for torch
from lowrank.allocation import DEFAULT_STRATEGY
from lowrank.experiments.compare import DENSE, reference_run, sweep_reference
from lowrank.experiments.sweep import SweepSpec, start_sweep
from lowrank.methods import COMPARISON
from lowrank.needs import needs_for
from lowrank.report import formats
from lowrank.statistics import statistics_label

# Plain SVD against the recommended method (lowrank.methods.COMPARISON), on the default plan (docs/results/allocation.md).
DEMO_METHODS = COMPARISON
DEMO_BUDGETS = (0.3, 0.5, 0.7)
DEMO_STRATEGY = DEFAULT_STRATEGY
DEMO_LABEL = "demo"


def demo_wait(model: str, task: str, current: bool) -> bool:
    """When the demo's ``model`` has an untrained head on ``task``: why the demo waits and, unless it is the ``current``
    model (whose card is above), the card of the build it waits for; returns whether it waits."""
    if not cache.untrained_head(model, task):
        return False
    recipe = session.finetune_recipe(model, task)
    where = "above" if current else "below"
    if recipe.name == session.defaults().model:
        why = (
            f"The demo runs on {names.model_label(recipe.name)}, which is not built yet (its progress is {where}); "
            f"meanwhile the pages work on {names.model_label(model)}, whose classification head is untrained."
        )
    else:
        why = (
            f"The demo is off: the default model {names.model_label(model)} has no trained classification head "
            f"for {names.task_label(task)}, so its accuracies would say nothing about a method. Fine-tune it "
            f"({where}) and make the result the default (`LOWRANK_DEFAULT_MODEL`)."
        )
    st.info(why, icon=":material/hourglass_top:")
    if not current:
        widgets.build_card(recipe)
    return True


def run_demo() -> None:
    """Spectra -> the statistics the demo needs -> budget plan -> background sweep."""
    start = session.defaults()
    model = start.first_model
    try:
        task = session.make_current(model, start.first_task(model))
    except widgets.USER_ERRORS as err:
        widgets.show_error("Demo", err)
        return
    needs = needs_for(DEMO_METHODS, DEMO_STRATEGY)
    with st.status(
        f"Stakeholder demo on {names.model_label(model)} · {names.task_label(task)}", expanded=True
    ) as status:
        try:
            st.write("1/4 Singular-value spectra of every compressible layer")
            frame = cache.spectra(model, task)
            st.write(
                f"{len(frame)} layers; median effective rank {frame['effective_rank'].median():.0f} "
                f"of {int(frame[['out', 'in']].min(axis=1).median())}"
            )
            st.write(f"2/4 {statistics_label(needs) or 'No statistics needed'}")
            cache.statistics(model, task, needs)
            st.write(f"3/4 Budget plan: {DEMO_STRATEGY} at {session.DEFAULT_BUDGET:.0%} of the compressible parameters")
            session.set_plan(cache.plan_ranks(model, task, session.DEFAULT_BUDGET, DEMO_STRATEGY))
            st.write(
                f"4/4 Factorization sweep in the background: {', '.join(DEMO_METHODS)} × "
                f"{', '.join(f'{b:.0%}' for b in DEMO_BUDGETS)}"
            )
            spec = SweepSpec(
                model=model,
                task=task,
                methods=list(DEMO_METHODS),
                budgets=list(DEMO_BUDGETS),
                strategy=DEMO_STRATEGY,
                eval_limit=session.eval_limit(),
                label=DEMO_LABEL,
            )
            start_sweep(spec, cache.store())
        except widgets.USER_ERRORS as err:
            status.update(label="Demo failed", state="error")
            widgets.show_error("Demo", err)
            return
        status.update(
            label="Demo started: the sweep runs in the background (you can leave this page)",
            state="complete",
            expanded=False,
        )


def demo_results() -> None:
    """Live progress and trade-off plot of the latest demo sweep (polls the run store while it runs)."""
    store = cache.store()

    def tradeoffs(sweep: dict) -> None:
        spec = sweep["spec"]
        runs = store.runs(sweep_id=sweep["id"], status="done")
        compressed = runs[runs["method"] != DENSE]
        dense = sweep_reference(store, spec, runs)
        if compressed.empty and dense is None:
            return
        flagged = widgets.destroyed_runs(compressed, dense, spec["task"])
        widgets.destroyed_warning(compressed, flagged)
        st.plotly_chart(plots.tradeoff_figure(compressed, dense, flagged), key=f"demo_plot_{sweep['id']}")
        if not compressed.empty and dense is not None:
            reference = formats.format_metric(dense["metric"], dense["value"])
            lines = []
            for budget, group in compressed.sort_values("budget").groupby("budget", sort=True):
                results = ", ".join(
                    f"{row['method']} **{formats.format_metric(row['metric'], row['value'])}**"
                    + (" (✕ destroys the model)" if row["id"] in flagged else "")
                    for row in group.drop_duplicates("method").sort_values("method").to_dict("records")
                )
                lines.append(
                    f"- keeping **{budget:.0%}** of the compressible parameters: {results} (dense {reference})"
                )
            st.markdown("\n".join(lines))

    widgets.follow_sweep(store, DEMO_LABEL, tradeoffs)


st.title("lowrank-studio")
st.caption(layout.entry_for(__file__).next)
st.markdown(
    "Compress a Transformer by replacing its Linear layers with **low-rank factors**, weighted by how much "
    "each weight matters to the task (its **Fisher information**). The workflow:"
)
for number, entry in enumerate(layout.PAGES[1:], start=1):
    cols = st.columns([1, 3], vertical_alignment="center")
    layout.link(entry.key, f"{number}. {entry.title}", cols[0])
    cols[1].caption(entry.blurb)

st.subheader("Current status")
model, task, current_plan = session.model_key(), session.task_key(), session.plan()
dense = reference_run(cache.store(), task, model=model)
plan_text = (
    "none yet: open Ranks"
    if current_plan is None
    else f"{names.plan_fraction(current_plan):.0%} kept · {current_plan.strategy} · "
    f"{len(current_plan.ranks)} of {len(current_plan.layers)} layers factorized"
)
dense_text = (
    f"{names.quality_label(dense['metric'], cache.untrained_head(model, task)).lower()} "
    f"{formats.format_metric(dense['metric'], dense['value'])}"
    if dense
    else "not measured yet: open Model & task"
)
for col, (label, value) in zip(
    st.columns(4),
    [
        ("Model", names.model_label(model)),
        ("Task", names.task_label(task)),
        ("Rank plan", plan_text),
        ("Dense model", dense_text),
    ],
):
    with col.container(border=True, height="stretch"):
        st.caption(label)
        st.markdown(f"**{value}**")
widgets.untrained_head_warning(model, task)

st.subheader("Stakeholder demo")
defaults = session.defaults()
st.markdown(
    f"One click on the default model (**{names.model_label(defaults.model)}**, "
    f"{names.task_label(defaults.first_task(defaults.model))}): spectra → "
    f"{statistics_label(needs_for(DEMO_METHODS, DEMO_STRATEGY))} → a {DEMO_STRATEGY} budget plan → "
    f"{' vs '.join(DEMO_METHODS)} at "
    f"{', '.join(f'{b:.0%}' for b in DEMO_BUDGETS)} of the parameters → the trade-off plot. "
    "The factorizations run in the background and are stored; timings in `docs/results/dashboard.md`."
)
demo_model = defaults.first_model
demo_task = defaults.first_task(demo_model)
waits = demo_wait(demo_model, demo_task, (demo_model, demo_task) == (model, task))
hand_edited = current_plan is not None and bool(current_plan.meta.get("edited"))
if st.button(
    "Run the demo",
    type="primary",
    icon=":material/play_arrow:",
    disabled=waits,
    help="needs a trained classification head (see above)" if waits else None,
):
    if hand_edited:
        st.session_state["demo_confirm"] = True  # the demo would replace a plan edited by hand: ask first
    else:
        run_demo()
if st.session_state.get("demo_confirm") and hand_edited and not waits:
    with st.container(border=True):
        st.warning(
            f"The demo replaces your hand-edited rank plan ({names.plan_fraction(current_plan):.0%} kept) with a "
            f"{DEMO_STRATEGY} plan. Export it on the Ranks page first to keep it.",
            icon=":material/warning:",
        )
        cols = st.columns([1, 1, 3])
        replace = cols[0].button("Replace it and run the demo", type="primary", key="demo_replace")
        keep = cols[1].button("Keep my plan", key="demo_keep")
    if replace or keep:
        st.session_state["demo_confirm"] = False
        if replace:
            run_demo()
        else:
            st.rerun()
demo_results()

decoder_demo.section()
