"""Predicted against measured (the Spectra and Summary pages): per layer, the second-order estimate of how much
replacing it alone by plain SVD changes the predictions against the measured KL to dense
(:func:`lowrank.analysis.agreement.single_layer_kl`, started from the page, cached); per run, the SVD-drop metric's
whole-model prediction against the loss increase the run measured. Each with Spearman's rho printed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank import report
from lowrank.analysis.agreement import rank_correlation, run_agreement, single_layer_kl
from lowrank.ranks import resolve_ranks
from lowrank.statistics import DEFAULT

from . import cache, session, widgets
from .progress import ProgressBar

MEASURE_BATCHES = 4  # validation batches of the single-layer measurement
RESULTS = "docs/results/predictor.md"  # how well each estimate ranks layers on the suite


def plan_ranks(model: str, task: str) -> tuple[dict[str, int], str]:
    """The ranks the per-layer estimates use, and where they come from (for captions): the current plan, else
    :data:`dashboard.session.DEFAULT_BUDGET` kept in every layer."""
    current = session.plan()
    if current is not None:
        return current.ranks, "the current rank plan"
    ranks = resolve_ranks(cache.load(model, task).model, session.DEFAULT_BUDGET)
    return ranks, f"{session.DEFAULT_BUDGET:.0%} kept in every layer"


@st.cache_data(show_spinner=False, max_entries=8)
def measured_kl(model: str, task: str, ranks_key: tuple) -> pd.DataFrame:
    """:func:`single_layer_kl` at ``ranks_key`` (sorted ``(name, rank)`` pairs) on :data:`MEASURE_BATCHES` batches."""
    with ProgressBar("Measuring each layer alone") as bar:
        return single_layer_kl(
            cache.load(model, task), cache.get_task(task), dict(ranks_key), limit=MEASURE_BATCHES, progress=bar
        )


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
    """Per layer: the predicted output change against the measured KL to dense, once measured (a button)."""
    st.subheader("Predicted against measured, per layer")
    ranks, source = plan_ranks(model, task)
    if not ranks:
        st.caption("The plan keeps every layer dense: nothing to measure.")
        return
    ranks_key = tuple(sorted(ranks.items()))
    started = f"{key}_measure"
    if st.button(
        "Measure each layer alone",
        icon=":material/science:",
        key=f"{key}_button",
        help=f"Each of the {len(ranks)} layers replaced alone by plain SVD at the ranks of {source}, "
        f"on {MEASURE_BATCHES} validation batches (one forward per layer and batch; cached)",
    ):
        st.session_state[started] = ranks_key
    if st.session_state.get(started) != ranks_key:
        st.caption(f"Measures how much each layer alone changes the predictions, at the ranks of {source}.")
        return
    with widgets.stop_on_error("Cannot measure the layers"):
        measured = measured_kl(model, task, ranks_key)
        estimates = cache.taylor(model, task, ranks_key)
    frame = measured.assign(
        predicted=measured["name"].map({n: e["second_order"] for n, e in estimates.items()}),
        measured=measured["measured_kl"],
        label=[f"{n} (rank {r})" for n, r in zip(measured["name"], measured["rank"])],
    )
    st.plotly_chart(
        scatter_figure(
            frame, "predicted output change (nats)", "measured KL to dense (nats)", "Each layer alone, plain SVD"
        ),
        key=f"{key}_layer_scatter",
    )
    rho = rank_correlation(frame["predicted"], frame["measured"])
    st.caption(
        f"Spearman ρ = {rho:+.2f} over {len(frame)} layers. x: 0.5 mean_n <g_n, dW>^2 (the empirical-Fisher "
        f"quadratic form on {DEFAULT.num_batches * DEFAULT.batch_size} {DEFAULT.split} examples); y: mean "
        f"KL(p_dense || p_layer) on the first {MEASURE_BATCHES} validation batches, at the ranks of {source}. "
        f"On the suite: `{RESULTS}`."
    )


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
