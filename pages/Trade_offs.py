"""Trade-offs: quality against kept parameters for every stored run measured like the dense reference (one line
per method, Pareto front, the reference of lowrank.experiments.compare.reference_run), and a form that starts a
background sweep (methods x budgets x strategy)."""

from __future__ import annotations

import streamlit as st

import lowrank
from dashboard import cache, layout, names, plots, session, widgets  # first: sets up the environment for torch
from lowrank.allocation import DEFAULT_STRATEGY, available_strategies
from lowrank.experiments.compare import DENSE, comparable, reference_run
from lowrank.experiments.sweep import SweepSpec, reap_stale, running_sweeps, start_sweep

layout.header(__file__)
store = cache.store()
model, task = session.model_key(), session.task_key()

runs = store.runs()
models = list(dict.fromkeys([model, *runs["model"].dropna()]))
tasks = list(dict.fromkeys([task, *runs["task"].dropna()]))
cols = st.columns([2, 2, 3])
shown_model = cols[0].selectbox("Model", models, format_func=names.model_label, key="tradeoff_model")
shown_task = cols[1].selectbox("Task", tasks, format_func=names.task_label, key="tradeoff_task")
selection = runs[(runs["model"] == shown_model) & (runs["task"] == shown_task)]
widgets.untrained_head_warning(shown_model, shown_task)
strategies = sorted(selection.loc[selection["method"] != DENSE, "strategy"].dropna().unique())
shown_strategies = cols[2].multiselect(
    "Strategies",
    strategies,
    default=strategies,  # a new key when new ones appear
    key=f"tradeoff_strategies_{'_'.join(strategies)}",
)
running = not running_sweeps(store).empty  # a sweep whose owner stopped reporting is no longer running


@st.fragment(run_every=widgets.POLL_S if running else None)
def live() -> None:
    reap_stale(store)
    sweeps = store.sweeps()
    if running and (sweeps["status"] != "running").all():
        st.rerun()  # the last sweep finished: redraw once, stop polling
    for sweep in sweeps[(sweeps["status"] == "running") | (sweeps.index == 0)].to_dict("records"):
        widgets.sweep_card(store, sweep)  # the running sweeps and the latest one
    current = store.runs(model=shown_model, task=shown_task)
    dense = reference_run(store, shown_task, model=shown_model)
    done = comparable(current[(current["status"] == "done") & (current["method"] != DENSE)], dense)
    done = done[done["strategy"].isin(shown_strategies)]
    if done.empty and dense is None:
        st.info(
            "No finished runs for this model and task yet: run a sweep below, or factorize on the Factorize page.",
            icon=":material/info:",
        )
    else:
        flagged = widgets.destroyed_runs(done, dense, shown_task)
        widgets.destroyed_warning(done, flagged)
        st.plotly_chart(plots.tradeoff_figure(done, dense, flagged), key="tradeoff")
        reference = dense or done.iloc[0].to_dict()
        measured = reference.get("protocol") if isinstance(reference.get("protocol"), str) else "not recorded"
        st.caption(
            "Circled points are on the Pareto front: no other run has at most as many parameters and a better "
            f"{reference['metric']}. Hover a point for its budget, size and latency. Every point's "
            f"{reference['metric']} measured as: {measured}."
        )
    with st.expander(f"All runs for this model and task ({len(current)})"):
        st.dataframe(
            current[
                [
                    "id",
                    "status",
                    "method",
                    "solver",
                    "strategy",
                    "budget",
                    "metric",
                    "value",
                    "protocol",
                    "kept_fraction",
                    "params_linear",
                    "size_bytes",
                    "latency_ms_b1",
                    "wall_s",
                    "created",
                    "error",
                    "sweep_id",
                ]
            ],
            hide_index=True,
            column_config={
                "budget": st.column_config.NumberColumn("budget", format="percent"),
                "kept_fraction": st.column_config.NumberColumn("kept", format="percent"),
                "value": st.column_config.NumberColumn("value", format="%.4f"),
                **widgets.RUN_COLUMNS,
            },
        )


live()

st.subheader("New sweep")
st.caption(
    f"On the current model and task ({names.model_label(model)}, {names.task_label(task)}). The sweep runs in a "
    "background process and writes every run to the run store: leaving or reloading this page loses nothing."
)
with widgets.stop_on_error(f"Cannot start a sweep on {names.model_label(model)}", choose_model=True):
    methods, default = widgets.method_choices(cache.load(model, task))
with st.form("sweep_form"):
    cols = st.columns([3, 3, 2])
    chosen = cols[0].multiselect("Methods", methods, default=default, format_func=names.method_label)
    budgets = cols[1].multiselect(
        "Budgets (kept fraction)",
        [round(0.1 * k, 1) for k in range(1, 10)],
        default=[0.3, 0.5, 0.7],
        format_func=lambda b: f"{b:.0%}",
    )
    strategy_names = available_strategies()
    strategy = cols[2].selectbox(
        "Strategy", strategy_names, index=strategy_names.index(DEFAULT_STRATEGY), format_func=names.strategy_label
    )
    tunable = [m for m in methods if lowrank.get_method(m).options]
    options = {}
    if tunable:
        with st.expander("Method options (used for the methods chosen above)"):
            for col, method in zip(st.columns(len(tunable)), tunable):
                with col:
                    st.markdown(f"**{method}**")
                    options[method] = widgets.option_widgets(method, "sweep")
    submitted = st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:")

if submitted:
    spec = SweepSpec(
        model=model,
        task=task,
        methods=chosen,
        budgets=sorted(budgets),
        strategy=strategy,
        options={m: options[m] for m in chosen if m in options},
        eval_limit=session.eval_limit(),
    )
    try:
        sweep_id = start_sweep(spec, store)
    except widgets.USER_ERRORS as err:
        widgets.show_error("Cannot start the sweep", err)
    else:
        st.toast(f"Sweep #{sweep_id} started: {spec.runs_total} runs", icon=":material/rocket_launch:")
        st.rerun()
