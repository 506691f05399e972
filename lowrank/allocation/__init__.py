"""Per-layer rank allocation under one global parameter budget.

``allocate(model, budget, strategy)`` returns a :class:`RankPlan`; ``plan.ranks`` goes to
``compress(model, plan.ranks, method=...)``. One idea per module:

* :mod:`.choices`: each layer's choices (ranks ``align, 2 align, ...`` below break-even, or
  dense; rank ``r`` costs ``r * (out + in)``, dense ``out * in``) and the budget;
* :mod:`.curves`: predicted loss increase per rank, ``0.5 * sum_{k > r} s_k^2`` of the FWSVD spectrum;
* :mod:`.solvers`: common-threshold bisection, convex-hull greedy, and the fill step;
* :mod:`.sensitivity`: calibration loss measured one layer at a time (cached);
* :mod:`.strategies`: the strategy registry and :func:`allocate`;
* :mod:`.explain`: the budget's price and a reason per layer (why each layer got its rank);
* :mod:`.summary`: a plan by layer type and depth;
* :mod:`.plan`: the plan, its JSON file and the one reader of it (:func:`read_ranks`, :meth:`RankPlan.load`).
"""

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.allocation.choices import parse_budget
from lowrank.allocation.curves import layer_loss_curves, predicted_loss_curve
from lowrank.allocation.explain import PlanExplanation, Price, explain_plan
from lowrank.allocation.plan import PlannedLayer, RankPlan, read_ranks
from lowrank.allocation.sensitivity import measure_sensitivity, sensitivity_cache_path, sensitivity_settings
from lowrank.allocation.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Strategy,
    allocate,
    available_strategies,
    get_strategy,
    register_strategy,
    strategy_curves,
)
from lowrank.allocation.summary import summarize_plan

__all__ = [
    "DEFAULT_ALIGN",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "PlanExplanation",
    "PlannedLayer",
    "Price",
    "RankPlan",
    "Strategy",
    "allocate",
    "available_strategies",
    "explain_plan",
    "get_strategy",
    "layer_loss_curves",
    "measure_sensitivity",
    "parse_budget",
    "predicted_loss_curve",
    "read_ranks",
    "register_strategy",
    "sensitivity_cache_path",
    "sensitivity_settings",
    "strategy_curves",
    "summarize_plan",
]
