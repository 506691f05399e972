"""Ranks: the per-layer rank plan as an editable table (rank, kept parameters, predicted loss increase,
break-even flag, why), filled from a budget and an allocation strategy, imported or exported as JSON, and why a layer
has its rank (its curve against rank, the budget's price)."""

from __future__ import annotations

import streamlit as st

from dashboard import (
    cache,
    layout,
    names,
    rank_table,
    session,
    why_rank,
    widgets,
)  # first: sets up the environment for torch
from dashboard.progress import ProgressBar
from lowrank.allocation import RankPlan, available_strategies, get_strategy
from lowrank.needs import needs_for
from lowrank.report import formats
from lowrank.statistics import statistics_label

layout.header(__file__)
model, task = session.model_key(), session.task_key()
with widgets.stop_on_error(f"Cannot plan ranks for {names.model_label(model)}", choose_model=True):
    loaded = cache.load(model, task)
    layers = cache.layer_table(model, task)
    plan = session.ensure_plan()

# ---------------------------------------------------------------- fill from a budget and a strategy
with st.container(border=True):
    strategies = available_strategies()
    cols = st.columns([3, 2, 1, 1], vertical_alignment="bottom")
    budget = cols[0].slider(
        "Budget: kept fraction of the compressible parameters",
        0.05,
        1.0,
        session.DEFAULT_BUDGET,
        0.01,
        format="%.2f",
        key="ranks_budget",
    )
    strategy = cols[1].selectbox(
        "Strategy",
        strategies,
        index=strategies.index(plan.strategy) if plan.strategy in strategies else 0,
        key="ranks_strategy",
    )
    align = cols[2].number_input(
        "Align",
        min_value=1,
        max_value=128,
        value=plan.align,
        step=1,
        key="ranks_align",
        help="Ranks are multiples of this, rounded down to stay within the budget (1: unaligned); "
        "aligned ranks run faster (docs/results/speed.md)",
    )
    fill = cols[3].button("Fill ranks", type="primary", icon=":material/auto_fix_high:", width="stretch")
    spec = get_strategy(strategy)
    needs = needs_for(strategy=strategy)
    inputs = ([statistics_label(needs)] if needs else []) + (["calibration batches"] if spec.needs_task else [])
    st.caption(spec.description + (f" Needs {' and '.join(inputs)} (computed on first use, cached)." if inputs else ""))

if fill:
    try:
        with ProgressBar(f"Allocating ranks ({strategy})") as bar:
            new_plan = cache.plan_ranks(model, task, float(budget), strategy, progress=bar, align=int(align))
    except widgets.USER_ERRORS as err:
        widgets.show_error("Cannot fill the plan", err)
    else:
        session.set_plan(new_plan)
        st.rerun()

curves = cache.loss_curves(model, task) if cache.is_cached(model, task, cache.PREDICTION_NEEDS) else None
with widgets.stop_on_error("Cannot compute the curves of the plan's strategy"):
    shown_curves = why_rank.curves_for(model, task, session.plan().strategy)


# ---------------------------------------------------------------- the editable table
# A fragment: a cell edit reruns the table, its totals and the export, not the whole page. Cell edits are applied
# before the table is drawn (the editor's state holds them when this run starts), so one run shows the new totals
# and derived columns. A refused cell (or one kept dense at break-even) gets a fresh editor, which shows the plan's
# rank again, and a message at its row until the next edit.
shapes = dict(zip(layers["name"], zip(layers["out"], layers["in"])))


@st.fragment
def plan_editor() -> None:
    plan = session.plan()
    editor_key = f"rank_editor_{st.session_state['editor_version']}"  # the editor drawn on the last run
    edits = rank_table.read_edits(plan, st.session_state.get(editor_key), shapes)
    if edits.changes:
        plan = plan.with_ranks(edits.changes, curves)  # read_rank checked every rank as with_ranks does
        st.session_state["plan"] = plan
    session.render_status()  # the sidebar line; written on every run, so fragment reruns may write it too
    if edits.edited:
        st.session_state["rank_messages"] = edits.messages
        if edits.refused or edits.notes:
            st.session_state["editor_version"] += 1  # a fresh editor, showing the ranks as kept
    for name, message in edits.refused.items():
        st.error(f"{name}: {message} (the cell is back to its previous rank)", icon=":material/error:")
    for name, message in edits.notes.items():
        st.warning(f"{name}: {message}", icon=":material/info:")

    totals = st.container()
    messages = st.session_state["rank_messages"]
    explained = why_rank.explain(plan, shown_curves)
    frame = rank_table.plan_frame(plan, layers, curves, messages, explained.reasons)
    st.data_editor(
        frame,
        key=f"rank_editor_{st.session_state['editor_version']}",
        hide_index=True,
        height=min(35 * len(frame) + 38, 560),
        disabled=[c for c in frame.columns if c != "rank"],
        column_order=rank_table.shown_columns(frame, predicted=curves is not None, messages=bool(messages)),
        column_config={
            "layer": st.column_config.TextColumn("layer", width="medium", pinned=True),
            "block": st.column_config.NumberColumn("block", width="small"),
            "rank": st.column_config.TextColumn(
                "rank",
                help="Rank of U (out×r) V (r×in): a whole number from 1 to min(out, in); empty: keep the layer dense",
            ),
            "message": st.column_config.TextColumn(
                "message", width="large", help="Why the last edit of this row's rank was refused or changed"
            ),
            "break_even": st.column_config.NumberColumn(
                "break-even", help="At or above this rank the factors are not smaller than the dense matrix"
            ),
            "params": st.column_config.NumberColumn("kept params", format="localized"),
            "kept": st.column_config.ProgressColumn("kept", format="percent", min_value=0.0, max_value=1.0),
            "predicted_loss": st.column_config.NumberColumn(
                "predicted loss ↑ (nats)",
                format=formats.SMALL_NUMBER_FORMAT,
                help="Second-order estimate from the Fisher information (nats)",
            ),
            "dense": st.column_config.CheckboxColumn(
                "dense",
                help="Break-even flag: the layer stays dense because a "
                "useful rank would be at or above break-even (or you cleared its "
                "rank)",
            ),
            "why": st.column_config.TextColumn(
                "why", width="large", help="Why the strategy gave this rank (rules: lowrank.allocation.explain)"
            ),
        },
    )

    with totals:
        fraction = names.plan_fraction(plan)
        cols = st.columns(5)
        cols[0].metric(
            "Kept parameters",
            f"{plan.params:,}",
            f"{fraction:.1%} of {formats.format_params(plan.dense_params)}",
            delta_color="off",
            delta_arrow="off",
            help=f"{plan.params:,} of {plan.dense_params:,} in compressible layers",
        )
        over = plan.params - plan.budget
        cols[1].metric(
            "Budget",
            formats.format_params(plan.budget),
            f"{'over' if over > 0 else 'within'} by {formats.format_params(abs(over))}",
            delta_color="inverse" if over > 0 else "normal",
            delta_arrow="off",
            help=f"{plan.budget:,} parameters ({plan.budget / plan.dense_params:.1%}); strategy {plan.strategy}"
            + (", edited by hand" if plan.meta.get("edited") else ""),
        )
        cols[2].metric("Factorized layers", f"{len(plan.ranks)} / {len(plan.layers)}")
        predicted = frame["predicted_loss"].sum(min_count=1)
        cols[3].metric(
            "Predicted loss increase",
            formats.format_small(predicted, "nats"),
            help="Sum over layers of the Fisher-predicted loss increase (nats)",
        )
        cols[4].metric(
            "Whole model",
            formats.format_params(loaded.num_parameters() - plan.dense_params + plan.params),
            help="All parameters after factorization (embeddings, norms and heads stay dense)",
        )
        if curves is None:
            st.caption(f"Predicted loss increases need the {statistics_label(cache.PREDICTION_NEEDS)}.")
            widgets.statistics_button(model, task, cache.PREDICTION_NEEDS)

    why_rank.section(model, task, plan, shown_curves, explained)

    # import / export (here, so the exported plan is the edited one)
    cols = st.columns(2)
    with cols[0]:
        st.download_button(
            "Export plan (JSON)",
            plan.to_json(),
            file_name=f"{names.model_label(model)}-rank-plan.json",
            mime="application/json",
            icon=":material/download:",
        )
    with cols[1]:
        uploaded = st.file_uploader("Import a plan (JSON)", type=["json"], key="plan_upload")
        if uploaded is not None and uploaded.file_id != st.session_state.get("imported_plan"):
            st.session_state["imported_plan"] = uploaded.file_id
            try:
                imported = RankPlan.from_json(uploaded.getvalue())
                imported.check_layers(shapes, names.model_label(model))
            except ValueError as err:
                widgets.show_error(f"Cannot import {uploaded.name}", err)
            else:
                session.set_plan(imported)
                st.rerun()


plan_editor()
