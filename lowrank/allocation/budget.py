"""Budget solvers: pick one choice per layer (:class:`~lowrank.allocation.choices.LayerChoices`) within a budget.

* :func:`threshold_allocation`: every layer takes its smallest choice scoring at most a common threshold ``t``
  (scores made non-increasing in rank), ``t`` the smallest that fits, by bisection over the sorted breakpoints;
* :func:`greedy_allocation`: greedy on each layer's lower convex hull of (cost, loss) points, largest loss
  decrease per parameter first, with a certified lower bound (the convex relaxation's optimum);
* :func:`fill_budget`: both end with it, spending what is left one single choice at a time.

Guarantee: cost ``<= budget`` and ``budget - cost < max_l align (out_l + in_l)``, the largest single step.
Cost: O(choices log choices), no refactorization. Details: docs/methods.md#rank-allocation-lowrankallocation.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from lowrank.allocation.choices import LayerChoices


def _as_scores(layers: dict[str, LayerChoices], scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validated float arrays, made non-increasing: a choice scores the worst of itself and every larger choice."""
    result = {}
    for name, choices in layers.items():
        s = np.asarray(scores[name], dtype=float)
        if s.shape != (choices.count,) or not np.isfinite(s).all():
            raise ValueError(f"{name}: expected {choices.count} finite scores (one per choice), got shape {s.shape}")
        result[name] = np.maximum.accumulate(s[::-1])[::-1]
    return result


def fill_budget(
    layers: dict[str, LayerChoices], choice: dict[str, int], budget: int, priority: Callable[[str, int], float]
) -> dict[str, int]:
    """Spend what ``choice`` leaves of ``budget``: repeatedly move the layer of highest ``priority(name, k)``
    (k: its current choice) to its next choice if that fits, until no layer's next choice fits.

    Ends maximal: afterwards no single layer can move up within the budget. O(steps log layers).
    """
    choice = dict(choice)
    costs = {n: c.costs() for n, c in layers.items()}
    left = budget - sum(int(costs[n][choice[n]]) for n in layers)
    if left < 0:
        raise ValueError(f"allocation exceeds the budget by {-left:,} parameters")
    order = {n: i for i, n in enumerate(layers)}
    heap = [(-priority(n, choice[n]), order[n], n) for n in layers if choice[n] + 1 < layers[n].count]
    heapq.heapify(heap)
    while heap:
        _, _, name = heapq.heappop(heap)
        k = choice[name]
        step = int(costs[name][k + 1] - costs[name][k])
        if step > left:
            continue  # this layer's next choice does not fit, and ``left`` only shrinks
        choice[name], left = k + 1, left - step
        if k + 2 < layers[name].count:
            heapq.heappush(heap, (-priority(name, k + 1), order[name], name))
    return choice


def threshold_allocation(
    layers: dict[str, LayerChoices], budget: int, scores: dict[str, np.ndarray]
) -> tuple[dict[str, int], float]:
    """Common-threshold allocation: each layer takes its smallest choice whose score is <= ``t``.

    ``scores[name][k]``: badness of choice ``k`` (made non-increasing in ``k``; dense is usually 0).
    ``t`` is the smallest breakpoint whose plan fits the budget (bisection over the sorted
    scores: the plan cost is a non-increasing step function of ``t``), then
    :func:`fill_budget` spends the rest, worst-scoring layer first. Returns (choices, t).
    """
    scores = _as_scores(layers, scores)
    costs = {n: c.costs() for n, c in layers.items()}

    def plan(t: float) -> dict[str, int]:
        return {n: int(np.searchsorted(-s, -t, side="left")) for n, s in scores.items()}

    def cost(t: float) -> int:
        return sum(int(costs[n][k]) for n, k in plan(t).items())

    candidates = np.unique(np.concatenate(list(scores.values())))
    lo, hi = 0, len(candidates) - 1  # cost(candidates[hi]) is the smallest plan, which fits (resolve_budget)
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(candidates[mid]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    threshold = float(candidates[lo])
    choice = fill_budget(layers, plan(threshold), budget, lambda n, k: scores[n][k])
    return choice, threshold


def greedy_allocation(
    layers: dict[str, LayerChoices], budget: int, losses: dict[str, np.ndarray]
) -> tuple[dict[str, int], float]:
    """Global greedy on convex loss-vs-parameters curves: from every layer's smallest choice,
    repeatedly take the step with the largest loss decrease per added parameter that fits.

    ``losses[name][k]``: predicted loss of choice ``k`` (non-increasing in ``k``). Each layer's
    (cost, loss) points are replaced by their lower convex hull, so the decrease per parameter
    of its successive steps never increases (a non-convex stretch, such as the jump to dense,
    becomes one step). The prefix taken before the first step that does not fit is optimal for
    the parameters it uses (a Lagrangian argument: no plan with as few parameters predicts a
    lower loss); then :func:`fill_budget` spends the rest one single choice at a time. With
    convex curves and equal step costs the result is optimal for the budget.

    Returns ``(choices, lower_bound)``: ``lower_bound`` is the optimum of the convex relaxation
    (hull steps taken in order, the last one fractionally), a certified lower bound on the
    loss of any plan within the budget. O(choices + steps log layers), no refactorization.
    """
    order = {n: i for i, n in enumerate(layers)}
    costs = {n: c.costs() for n, c in layers.items()}
    hulls = {n: _lower_hull(costs[n], np.asarray(losses[n], dtype=float)) for n in layers}
    choice = {n: 0 for n in layers}
    left = budget - sum(int(costs[n][0]) for n in layers)
    position = {n: 0 for n in layers}

    def push(heap, name):
        hull, p = hulls[name], position[name]
        if p + 1 < len(hull):
            a, b = hull[p], hull[p + 1]
            rate = (losses[name][a] - losses[name][b]) / (costs[name][b] - costs[name][a])
            heapq.heappush(heap, (-rate, order[name], name))

    heap: list = []
    for name in layers:
        push(heap, name)
    while heap:
        _, _, name = heapq.heappop(heap)
        hull, p = hulls[name], position[name]
        step = int(costs[name][hull[p + 1]] - costs[name][hull[p]])
        if step > left:
            continue
        position[name], choice[name], left = p + 1, hull[p + 1], left - step
        push(heap, name)

    def rate(name: str, k: int) -> float:
        return (losses[name][k] - losses[name][k + 1]) / (costs[name][k + 1] - costs[name][k])

    return fill_budget(layers, choice, budget, rate), _relaxed_optimum(layers, budget, losses, hulls)


def _relaxed_optimum(
    layers: dict[str, LayerChoices], budget: int, losses: dict[str, np.ndarray], hulls: dict[str, list[int]]
) -> float:
    """Lowest loss of the convex relaxation within ``budget``: all hull steps by decreasing rate, the last one in part."""
    steps = []
    for name, hull in hulls.items():
        cost, loss = layers[name].costs(), losses[name]
        steps += [
            ((loss[a] - loss[b]) / (cost[b] - cost[a]), int(cost[b] - cost[a]), loss[a] - loss[b])
            for a, b in zip(hull, hull[1:])
        ]
    total = float(sum(losses[n][0] for n in layers))
    left = budget - sum(int(layers[n].costs()[0]) for n in layers)
    for _, cost, gain in sorted(steps, key=lambda step: -step[0]):
        if cost > left:
            return total - gain * left / cost
        total, left = total - gain, left - cost
    return total


def _lower_hull(costs: np.ndarray, losses: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points (costs[k], losses[k]) (costs increasing), starting at 0."""
    hull: list[int] = [0]
    for k in range(1, len(costs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when the segment a->k decreases the loss at least as fast per parameter as a->b
            if (losses[a] - losses[b]) * (costs[k] - costs[a]) <= (losses[a] - losses[k]) * (costs[b] - costs[a]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull
