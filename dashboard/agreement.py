"""Predicted against measured (the Spectra and Summary pages): per layer, the second-order estimate of how much
replacing it alone by plain SVD changes the predictions against the measured KL to dense
(:func:`lowrank.analysis.agreement.single_layer_kl`, started from the page, run in the background and kept in the
run store: :mod:`lowrank.experiments.measure`); per run, the SVD-drop metric's
whole-model prediction against the loss increase the run measured. Each with Spearman's rho printed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank import report
from lowrank.analysis.agreement import rank_correlation, run_agreement
from lowrank.experiments import measure
from lowrank.experiments.jobs import Job
from lowrank.experiments.measure import LayerMeasurement
from lowrank.ranks import resolve_ranks
from lowrank.statistics import DEFAULT

from . import cache, session, widgets

MEASURE_BATCHES = 4  # validation batches of the single-layer measurement
EXAMPLES = DEFAULT.num_batches * DEFAULT.batch_size  # of the predictions' statistics
RESULTS = "docs/results/predictor.md"  # how well each estimate ranks layers on the suite


def plan_ranks(model: str, task: str) -> tuple[dict[str, int], str]:
    """The ranks the per-layer estimates use, and where they come from (for captions): the current plan, else
    :data:`dashboard.session.DEFAULT_BUDGET` kept in every layer."""
    current = session.plan()
    if current is not None:
        return current.ranks, "the current rank plan"
    ranks = resolve_ranks(cache.load(model, task).model, session.DEFAULT_BUDGET)
    return ranks, f"{session.DEFAULT_BUDGET:.0%} kept in every layer"


def scatter_figure(frame: pd.DataFrame, x_title: str, y_title: str, title: str) -> go.Figure:
    """``frame``'s ``predicted`` against ``measured``, one point per row labelled by ``label``; log axes when every
    value is positive, and Spearman's rho in the title."""
    rho = rank_correlation(frame["predicted"], frame["measured"])
    fig = go.Figure(
        go.Scatter(
            x=frame["predicted"],
            y=frame["measured"],
            mode="markers",
            name="points",
            text=frame["label"],
            hovertemplate="%{text}<br>predicted %{x:.3g}<br>measured %{y:.3g}<extra></extra>",
        )
    )
    for axis, values in (("x", frame["predicted"]), ("y", frame["measured"])):
        positive = bool(len(values)) and bool((pd.to_numeric(values, errors="coerce") > 0).all())
        getattr(fig, f"update_{axis}axes")(type="log" if positive else "linear")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    shown = "n/a (fewer than 3 points)" if math.isnan(rho) else f"{rho:+.2f}"
    fig.update_layout(
        title=dict(text=f"{title}: Spearman ρ = {shown}", x=0, xanchor="left"),
        height=380,
        margin=dict(l=10, r=10, t=50, b=10),
    )
    return fig


def layer_section(model: str, task: str, key: str) -> None:
    """Per layer: the predicted output change against the measured KL to dense, measured in the background
    (:mod:`lowrank.experiments.measure`, a button; its progress polled while it runs, kept in the run store)."""
    st.subheader("Predicted against measured, per layer")
    ranks, source = plan_ranks(model, task)
    if not ranks:
        st.caption("The plan keeps every layer dense: nothing to measure.")
        return
    measurement = LayerMeasurement(model, task, ranks, MEASURE_BATCHES)
    store = cache.store()
    running = (measure.latest(store, measurement) or {}).get("status") == "running"

    @st.fragment(run_every=widgets.POLL_S if running else None)
    def card() -> None:
        row = measure.latest(store, measurement)
        if running and (row or {}).get("status") != "running":
            st.rerun()  # ended: draw the page once more, without polling
        if row is not None and row["status"] == "running":
            st.progress(
                min(1.0, (row["step"] or 0) / row["total"]) if row["total"] else 0.0,
                text=widgets.step_text("Measuring each layer alone", row),
            )
        elif row is not None and row["status"] == "done":
            with widgets.stop_on_error("Cannot estimate the layers' output change"):
                estimates = cache.taylor(model, task, tuple(sorted(ranks.items())))
            scatter(
                measure.result_frame(row),
                estimates,
                f"{key}_layer_scatter",
                f"x: 0.5 mean_n <g_n, dW>^2 (the empirical-Fisher quadratic form on {EXAMPLES} {DEFAULT.split} "
                "examples); y: mean KL(p_dense || p_layer) on the first "
                f"{MEASURE_BATCHES} validation batches, at the ranks of {source}. On the suite: `{RESULTS}`.",
            )
        else:
            if row is not None:  # failed or interrupted
                widgets.ended_job_warning(
                    "Measuring each layer alone", row, Job(store, measure.TABLE, int(row["id"])).log
                )
            if st.button(
                "Measure each layer alone",
                icon=":material/science:",
                key=f"{key}_button",
                help=f"Each of the {len(ranks)} layers replaced alone by plain SVD at the ranks of {source}, on "
                f"{MEASURE_BATCHES} validation batches (one forward per layer and batch), in the background; the "
                "result is kept in the run store",
            ):
                try:
                    measure.start_measurement(measurement, store)
                except widgets.USER_ERRORS as err:
                    widgets.show_error("Cannot measure the layers", err)
                else:
                    st.rerun()
            st.caption(f"Measures how much each layer alone changes the predictions, at the ranks of {source}.")

    card()


def scatter(measured: pd.DataFrame, estimates: dict, key: str, note: str) -> None:
    """The layers' predicted output change (``estimates[name]["second_order"]``) against their measured KL, with
    Spearman's rho and ``note`` below."""
    frame = measured.assign(
        predicted=measured["name"].map({n: e["second_order"] for n, e in estimates.items()}),
        measured=measured["measured_kl"],
        label=[f"{n} (rank {r})" for n, r in zip(measured["name"], measured["rank"])],
    )
    st.plotly_chart(
        scatter_figure(
            frame, "predicted output change (nats)", "measured KL to dense (nats)", "Each layer alone, plain SVD"
        ),
        key=key,
    )
    rho = rank_correlation(frame["predicted"], frame["measured"])
    st.caption(f"Spearman ρ = {rho:+.2f} over {len(frame)} layers. {note}")


def run_section(result: report.Summary, key: str) -> None:
    """Per run: the SVD-drop metric's whole-model predicted loss increase against the measured one."""
    frame = run_agreement(result.drop_checks)
    frame["label"] = [f"run #{r} at {b:.0%}" for r, b in zip(frame["run"], frame["budget"])]
    frame["measured"] = pd.to_numeric(frame["measured"], errors="coerce").astype(float)
    st.plotly_chart(
        scatter_figure(
            frame,
            "predicted loss increase (nats)",
            "measured loss increase (nats)",
            "Plain-SVD runs, whole model",
        ),
        key=f"{key}_run_scatter",
    )
    rho = rank_correlation(frame["predicted"], frame["measured"])
    st.caption(
        f"Spearman ρ = {'n/a (fewer than 3 runs)' if np.isnan(rho) else f'{rho:+.2f}'} over {len(frame)} "
        "plain-SVD runs: the metric's prediction from the weights and the Fisher, and the run's validation loss "
        "minus the dense model's."
    )


def checked_summary(model: str, task: str) -> report.Summary | None:
    """The summary of the stored runs with the SVD-drop metric's checks, when plain-SVD runs exist and the Fisher
    costs nothing now; else None."""
    result = report.summary(cache.store(), model, task)
    svd_runs = tuple(r.svd_run_id for r in result.rows if r.svd_run_id is not None)
    if not svd_runs or not cache.is_cached(model, task, cache.PREDICTION_NEEDS):
        return None
    compared = ((result.dense or {}).get("id"), *svd_runs)
    return report.with_drop_checks(result, cache.drop_checks(model, task, compared, result))
