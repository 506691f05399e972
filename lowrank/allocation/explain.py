"""Why a plan gives each layer its rank: the budget's price and a one-line reason per layer.

A layer ``l`` at rank ``r`` costs ``c_l(r) = r (out_l + in_l)`` parameters, dense ``out_l in_l``; ``L_l(r)`` is a
per-rank curve (:func:`lowrank.allocation.strategy_curves`: the predicted loss increase for the greedy strategies).
Its *rate* is the best loss decrease per added parameter it still offers,
``rho_l(r) = max_{r' > r} (L_l(r) - L_l(r')) / (c_l(r') - c_l(r))`` over its choices (multiples of ``align`` below
break-even, then dense: ``L_l = 0``), the slope of its lower convex hull right of ``r``. The *price* of a greedy plan
is ``lambda = max_l rho_l(r_l)`` (nats per parameter) over the factorized layers: what one more parameter of budget
would buy at best; the greedy (:func:`~lowrank.allocation.budget.greedy_allocation`) took hull steps by decreasing
rate, so every layer's last step bought at least ``lambda`` and it stopped where the next step cost more than was
left. A threshold strategy's price is its common threshold (``uniform``: the kept fraction of every layer's
parameters; ``energy``: of its SVD energy; ``sensitivity``: the measured loss increase a layer may add).

:func:`explain_plan` gives the rates, the price and a reason per layer by fixed rules (:func:`reason`). With the
curves of another strategy (``own=False``, e.g. K-FAC curves for a ``uniform`` plan) the reason also says what that
curve would have changed; a layer of a hand-edited ``uniform`` plan off the common fraction was set by hand. Cost: O(choices) per layer, no factorization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowrank.allocation.choices import layer_choices
from lowrank.allocation.plan import RankPlan

# Short names of the curves, for the reasons ("flat spectrum under K-FAC").
CURVE_NAMES = {"kfac_greedy": "K-FAC", "fisher_greedy": "the diagonal Fisher", "energy": "plain SVD energy"}
# Threshold strategies: plan.meta key of the common threshold, its unit.
THRESHOLDS = {
    "uniform": ("kept_fraction", "kept fraction of every layer's parameters"),
    "energy": ("energy", "kept fraction of every layer's SVD energy"),
    "sensitivity": ("loss_threshold", "measured loss increase (nats) a layer may add"),
}
# The rules of :func:`reason`.
FLAT = 0.5  # still this fraction of L(0) left at the chosen rank: the spectrum is flat
STEEP = 0.05  # at most this fraction left at a rank of at most QUARTER of the full rank: fast decay
QUARTER = 0.25
SCALE = 10.0  # L(0) this many times above (or below) the median layer's: sensitive (or matters little)
APART = 2.0  # a rate this many times above (or below) the median layer's: another curve would move the rank


@dataclass(frozen=True)
class Price:
    """The budget's price: ``value`` in ``unit``; ``greedy``: a rate ``lambda`` (nats per parameter)."""

    value: float
    unit: str
    greedy: bool


@dataclass(frozen=True)
class PlanExplanation:
    """What :func:`explain_plan` found: per layer its rate and reason, and the plan's price."""

    strategy: str
    curve_name: str  # whose curves ("K-FAC"), "" without curves
    own: bool  # the curves are the ones the strategy optimizes
    price: Price | None
    rates: dict[str, float]  # rho_l(r_l), NaN for a dense layer or without curves
    reasons: dict[str, str]


def rate(curve: np.ndarray, rank: int | None, out_features: int, in_features: int, align: int) -> float:
    """``rho(r) = max_{r' > r} (L(r) - L(r')) / (c(r') - c(r))`` over the choices above ``rank`` (multiples of
    ``align`` below break-even, then dense with ``L = curve[-1]``); NaN for a dense layer (``rank`` None)."""
    if rank is None:
        return math.nan
    choices = layer_choices({"l": (out_features, in_features)}, align)["l"]
    width = out_features + in_features
    steps = [((float(curve[rank]) - float(curve[r])) / ((r - rank) * width)) for r in choices.ranks if r > rank]
    steps.append((float(curve[rank]) - float(curve[-1])) / (out_features * in_features - rank * width))
    return max(steps)


def plan_price(plan: RankPlan, rates: dict[str, float], own: bool) -> Price | None:
    """The price of ``plan`` (see the module): ``max_l rho_l(r_l)`` for a strategy optimizing the curves behind
    ``rates`` (``own``), the threshold stored in ``plan.meta`` for a threshold strategy, else None."""
    if own and plan.strategy not in THRESHOLDS:
        finite = [r for r in rates.values() if math.isfinite(r)]
        return Price(max(finite), "nats per parameter", True) if finite else None
    key, unit = THRESHOLDS.get(plan.strategy, (None, ""))
    if key is None or plan.meta.get(key) is None:
        return None
    return Price(float(plan.meta[key]), unit, False)


def reason(
    strategy: str,
    curve_name: str,
    own: bool,
    rank: int | None,
    curve: np.ndarray | None,
    layer_rate: float,
    median_rate: float,
    median_scale: float,
    price: Price | None,
) -> str:
    """One line on why a layer has ``rank`` (None: dense), by fixed rules in this order: dense; then, for curves
    the strategy optimizes, a flat spectrum (``L(r) >= FLAT L(0)``), a layer that matters little or much
    (``L(0)`` ``SCALE`` times below or above the median ``median_scale``), a fast decay (``L(r) <= STEEP L(0)``
    at ``r <= QUARTER`` of the full rank), else the price; for another strategy's curves (``own`` False), the
    strategy's rule and whether that curve's rate is ``APART`` times above or below the median ``median_rate``."""
    under = f" under {curve_name}" if curve_name else ""
    if curve is None:
        return _threshold_rule(strategy, rank, price)
    start, left = float(curve[0]), float(curve[rank]) if rank is not None else 0.0
    if not own:
        rule = _threshold_rule(strategy, rank, price)
        if rank is None or not math.isfinite(layer_rate) or not median_rate > 0:
            return rule
        ratio = layer_rate / median_rate
        if ratio >= APART:
            return f"{rule}; ignores that{under} its next ranks buy {ratio:.1f}× the median layer's: would get more"
        if ratio <= 1 / APART:
            return f"{rule}; ignores that{under} its next ranks buy {ratio:.2f}× the median layer's: would get less"
        return f"{rule};{under} about the median layer's gain per rank"
    if rank is None:
        return f"kept dense:{under} even its last ranks buy more loss per parameter than the price"
    if strategy in THRESHOLDS:
        return _threshold_rule(strategy, rank, price)
    full = len(curve) - 1
    if start > 0 and left >= FLAT * start:
        return f"flat spectrum{under}: each rank buys little, so few are bought"
    if median_scale > 0 and start <= median_scale / SCALE:
        return f"matters little{under}: its whole truncation costs {start / median_scale:.2f}× the median layer's"
    if median_scale > 0 and start >= SCALE * median_scale:
        return f"sensitive{under}: truncating it costs {start / median_scale:.0f}× the median layer's, so it gets more"
    if start > 0 and left <= STEEP * start and rank <= QUARTER * full:
        return f"fast decay{under}: {rank} of {full} ranks buy back {1 - left / start:.0%} of the loss"
    tail = f" ({layer_rate:.2g} ≤ {price.value:.2g} nats/parameter)" if price is not None else ""
    return f"ranks bought until the next ones gained less than the price{tail}"


def _threshold_rule(strategy: str, rank: int | None, price: Price | None) -> str:
    state = "kept dense" if rank is None else f"rank {rank}"
    if strategy == "uniform":
        share = f" ({price.value:.0%})" if price is not None else ""
        return f"{state}: the same kept fraction{share} as every layer"
    if strategy == "energy":
        share = f" {price.value:.0%} of" if price is not None else ""
        return f"{state}: the smallest rank keeping{share} its SVD energy, like every layer"
    if strategy == "sensitivity":
        return f"{state}: the smallest measured rank whose calibration loss increase is under the common threshold"
    if strategy == "measured_greedy":
        return f"{state}: where the greedy on the measured single-layer loss per parameter stopped"
    return f"{state}: set by {strategy}"


def _by_hand(plan: RankPlan, layer, price: Price | None) -> str | None:
    """The reason of a layer of a hand-edited ``uniform`` plan whose kept fraction is off the common one by more than
    one ``align`` step (the rule no longer explains it), else None."""
    if not plan.meta.get("edited") or plan.strategy != "uniform" or price is None:
        return None
    step = plan.align * (layer.out_features + layer.in_features) / layer.dense_params
    kept = layer.params / layer.dense_params
    if abs(kept - price.value) <= step + 1e-12:
        return None
    state = "kept dense" if layer.rank is None else f"rank {layer.rank}"
    return f"{state}: set by hand ({kept:.0%} kept; uniform keeps about {price.value:.0%} of every layer)"


def explain_plan(
    plan: RankPlan, curves: dict[str, np.ndarray] | None, curve_name: str = "", own: bool = True
) -> PlanExplanation:
    """Rates, price and reasons (:func:`reason`) for every layer of ``plan``; ``curves`` ({layer: curve[r]},
    :func:`lowrank.allocation.strategy_curves`) are the strategy's own (``own``) or another's, to show what the
    strategy ignores; ``None``: the strategy's rule alone."""
    rates = {
        layer.name: rate(curves[layer.name], layer.rank, layer.out_features, layer.in_features, plan.align)
        if curves is not None and layer.name in curves
        else math.nan
        for layer in plan.layers
    }
    price = plan_price(plan, rates, own)
    finite = [r for r in rates.values() if math.isfinite(r)]
    median_rate = float(np.median(finite)) if finite else math.nan
    median_scale = float(np.median([float(c[0]) for c in curves.values()])) if curves else math.nan
    reasons = {
        layer.name: _by_hand(plan, layer, price)
        or reason(
            plan.strategy,
            curve_name,
            own,
            layer.rank,
            None if curves is None else curves.get(layer.name),
            rates[layer.name],
            median_rate,
            median_scale,
            price,
        )
        for layer in plan.layers
    }
    return PlanExplanation(plan.strategy, curve_name if curves is not None else "", own, price, rates, reasons)
