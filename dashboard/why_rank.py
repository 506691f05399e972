"""Why this rank (the Ranks page): a layer's curve against rank with the plan's rank and the budget's price, and the
reasons of :func:`lowrank.allocation.explain_plan` for the table's "why" column.

The curve is the strategy's own (:func:`lowrank.allocation.strategy_curves`); a strategy without one (``uniform``,
``sensitivity``) is shown against :data:`REFERENCE`'s curve, so the user sees what it ignores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from lowrank.allocation import STRATEGIES, PlanExplanation, RankPlan, explain_plan, get_strategy, strategy_curves
from lowrank.allocation.explain import CURVE_NAMES
from lowrank.layers import break_even_rank
from lowrank.needs import needs_for
from lowrank.report import formats
from lowrank.statistics import statistics_label

from . import cache, widgets
from .progress import ProgressBar

REFERENCE = "kfac_greedy"  # whose curves a strategy without its own is shown against


@dataclass(frozen=True)
class Curves:
    """The curves shown: ``strategy``'s (``own``), or :data:`REFERENCE`'s for a strategy without any."""

    strategy: str
    own: bool
    curves: dict[str, np.ndarray] | None  # None: their statistics are not computed yet

    @property
    def name(self) -> str:
        return CURVE_NAMES.get(self.strategy, self.strategy)

    @property
    def metric(self) -> str:
        return get_strategy(self.strategy).metric


@st.cache_data(show_spinner=False, max_entries=8)
def _curves(model: str, task: str, strategy: str) -> dict[str, np.ndarray]:
    stats = cache.statistics(model, task, needs_for(strategy=strategy))
    with ProgressBar(f"Curves of {strategy}") as bar:
        return strategy_curves(cache.load(model, task), strategy, stats=stats, progress=bar)


def curves_for(model: str, task: str, strategy: str) -> Curves:
    """The strategy's own curves (their statistics were computed when the plan was filled, else they are now), or
    the reference curves when their statistics cost nothing now (``curves`` None otherwise)."""
    own = strategy in STRATEGIES and get_strategy(strategy).curves is not None  # an imported plan: any name
    shown = strategy if own else REFERENCE
    needs = needs_for(strategy=shown)
    if not own and not cache.is_cached(model, task, needs):
        return Curves(shown, False, None)
    return Curves(shown, own, _curves(model, task, shown))


def explain(plan: RankPlan, shown: Curves) -> PlanExplanation:
    return explain_plan(plan, shown.curves, shown.name, shown.own)


def curve_figure(curve: np.ndarray, layer, explained: PlanExplanation, shown: Curves) -> go.Figure:
    """``curve[r]`` against rank r, the plan's rank marked (a dense layer: at break-even), break-even dotted, and for
    a greedy price the line of slope ``-lambda (out + in)`` through the plan's point: the greedy stops where the
    curve gets flatter than it."""
    ranks = np.arange(len(curve))
    fig = go.Figure(
        go.Scatter(
            x=ranks,
            y=curve,
            mode="lines",
            name="curve",
            hovertemplate="rank %{x}: %{y:.4g}<extra></extra>",
        )
    )
    even = break_even_rank(layer.out_features, layer.in_features)
    chosen = layer.rank if layer.rank is not None else min(even, len(curve) - 1)
    fig.add_trace(
        go.Scatter(
            x=[chosen],
            y=[curve[chosen]],
            mode="markers",
            marker=dict(size=12, symbol="diamond", color="crimson"),
            name="plan's rank" if layer.rank is not None else "dense (at break-even and above)",
            hovertemplate="rank %{x}: %{y:.4g}<extra>the plan</extra>",
        )
    )
    fig.add_vline(x=even, line=dict(dash="dot", width=1, color="gray"), annotation_text="break-even")
    price = explained.price
    if price is not None and price.greedy and layer.rank is not None:
        span = np.array([max(0, chosen - len(curve) // 4), min(len(curve) - 1, chosen + len(curve) // 4)])
        slope = -price.value * (layer.out_features + layer.in_features)
        fig.add_trace(
            go.Scatter(
                x=span,
                y=curve[chosen] + slope * (span - chosen),
                mode="lines",
                line=dict(dash="dash", color="gray"),
                name=f"price: {price.value:.3g} nats/parameter",
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title="rank")
    fig.update_yaxes(title=shown.metric, rangemode="tozero")
    title = f"{layer.name}: {shown.metric}" + ("" if shown.own else f" (what {explained.strategy} ignores)")
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=380, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def section(model: str, task: str, plan: RankPlan, shown: Curves, explained: PlanExplanation) -> None:
    """The "Why this rank" view: a layer chooser, its curve and the budget's price."""
    st.subheader("Why this rank")
    if shown.curves is None:
        needs = needs_for(strategy=shown.strategy)
        st.caption(
            f"{plan.strategy} reads no per-rank curve; the {CURVE_NAMES[shown.strategy]} curves show what it ignores "
            f"and need the {statistics_label(needs)}."
        )
        widgets.statistics_button(model, task, needs)
        return
    names = [layer.name for layer in plan.layers]
    name = st.selectbox("Layer", names, key="why_layer")
    layer = plan.layer(name)
    st.plotly_chart(curve_figure(shown.curves[name], layer, explained, shown), key="why_curve")
    cols = st.columns([1, 3])
    price = explained.price
    cols[0].metric(
        "Budget's price",
        "–" if price is None else (f"{price.value:.3g}" if price.greedy else f"{price.value:.1%}"),
        help=None if price is None else price.unit,
    )
    rate = explained.rates[name]
    if price is not None and price.greedy:
        text = (
            f"The price is the largest loss decrease per parameter any layer still offers "
            f"(λ = max over layers of its rate; {price.unit}). This layer's next ranks offer "
            f"{formats.format_small(rate, 'nats/parameter') if math.isfinite(rate) else 'nothing (dense)'}."
        )
    else:
        text = (
            f"{plan.strategy}: a common threshold, {price.unit if price else 'not recorded'}"
            + ("" if shown.own else f"; the curve is {shown.name}'s, which {plan.strategy} does not read")
            + "."
        )
    cols[1].caption(f"{text} Why: {explained.reasons[name]}. Rules: `lowrank.allocation.explain`.")
