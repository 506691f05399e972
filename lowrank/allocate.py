"""Rank allocation: how many ranks each compressible layer gets under one global parameter budget.

``allocate(model, budget, strategy)`` returns a :class:`RankPlan`; ``plan.ranks`` goes straight
to ``compress(model, plan.ranks, method=...)``. The budget counts the weights of the
compressible Linear layers (biases are never factorized): a layer at rank ``r`` costs
``r * (out + in)``, a dense layer ``out * in``.

Each layer's choices are the ranks ``align, 2 align, ...`` below break-even, plus staying
dense. Strategies (registry :data:`STRATEGIES`, extend with :func:`register_strategy`):

* ``uniform``: every layer keeps (about) the same fraction of its parameters;
* ``energy``: every layer keeps the same fraction of its squared Frobenius norm (plain SVD
  energy) with the smallest rank that reaches it;
* ``fisher_greedy``: global greedy on the predicted loss increase (below), taking the rank
  step with the largest predicted loss decrease per parameter until the budget is spent;
* ``sensitivity``: measured loss on a few calibration batches, one layer compressed at a
  time with plain SVD at a few kept fractions (cached on disk), interpolated in rank. Ranks
  below a layer's smallest measured fraction are not measured: they score above every
  measured value, so they are used only when the budget is below every layer at its smallest
  measured fraction (then all layers shrink by about the same relative amount).

``uniform``, ``energy`` and ``sensitivity`` share :func:`threshold_allocation`: each layer
has a score per choice (non-increasing in rank), every layer takes its smallest choice
scoring at most a common threshold, and the threshold is the smallest one that fits the
budget, found by bisection over the sorted breakpoints (exact, no tolerance).

Predicted loss (second order, FWSVD): with the empirical Fisher ``F`` as a diagonal Hessian
and ``F_ij`` replaced by its mean over the output rows, ``d_j^2 = mean_i F_ij``, the loss
increase of replacing ``W`` by ``W'`` is ``0.5 * sum_ij F_ij (W - W')_ij^2 ~= 0.5 ||(W - W') diag(d)||^2``,
minimized at rank ``r`` by the truncated SVD of ``W diag(d)`` (FWSVD) with value
``curve[r] = 0.5 * sum_{k > r} s_k^2``, ``s`` the singular values of ``W diag(d)``
(:func:`predicted_loss_curve`). The mean (not the sum) over rows keeps curves of layers
with different heights on the same scale, so they can be compared across layers.

Budget guarantee (every strategy, after its own allocation a common fill step spends the
rest): ``plan.params <= budget``, and no single layer can take its next choice within
what is left, so ``budget - plan.params < max_l align * (out_l + in_l)`` (the largest
single step; moving from the largest useful rank to dense costs at most that too). At
least 99% of the budget is used whenever that step is at most 1% of the budget (e.g.
MiniLM with ``align=8``: 15,360 parameters, 0.3% of a 40% budget).
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from .architectures import compressible_linears
from .assets import atomic_write_bytes, cache_dir
from .layers import check_rank, max_useful_rank
from .progress import Progress, report

DEFAULT_ALIGN = 8
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
PLAN_FORMAT = "lowrank-plan"
PLAN_VERSION = 1

Budget = Union[float, int]


# ---------------------------------------------------------------- predicted loss curves


def predicted_loss_curve(W: torch.Tensor, F: Optional[torch.Tensor] = None, axis: str = "in") -> np.ndarray:
    """``curve[r]`` (r = 0 .. min(out, in)): predicted loss increase of the best rank-r FWSVD truncation.

    ``curve[r] = 0.5 * sum_{k > r} s_k^2`` with ``s`` the singular values of ``W diag(d)``,
    ``d_j = sqrt(mean_i F_ij)`` (``axis="in"``, one weight per input feature) or of
    ``diag(d) W`` with ``d_i = sqrt(mean_j F_ij)`` (``axis="out"``). ``F=None`` means ``F = 1``.
    Non-increasing, ``curve[min(out, in)] = 0``. Cost: singular values of one matrix.
    """
    if axis not in ("in", "out"):
        raise ValueError(f"axis must be 'in' or 'out', got {axis!r}")
    W = torch.as_tensor(W).detach().float().cpu()
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    if F is None:
        scaled = W
    else:
        F = torch.as_tensor(F).detach().float().cpu()
        if F.shape != W.shape:
            raise ValueError(f"importance shape {tuple(F.shape)} does not match weight shape {tuple(W.shape)}")
        if not torch.isfinite(F).all() or (F < 0).any():
            raise ValueError("importance must be finite and non-negative")
        scaled = W * F.mean(0).sqrt()[None, :] if axis == "in" else F.mean(1).sqrt()[:, None] * W
    s2 = torch.linalg.svdvals(scaled).double().numpy() ** 2
    tail = np.cumsum(s2[::-1])[::-1]  # tail[k] = sum_{j >= k} s_j^2 (0-based)
    return 0.5 * np.append(tail, 0.0)


def layer_loss_curves(model, importance: dict[str, torch.Tensor], axis: str = "in",
                      progress: Optional[Progress] = None) -> dict[str, np.ndarray]:
    """``{name: curve}`` for every compressible layer that has an importance tensor (see :func:`predicted_loss_curve`).

    The dashboard's rank editor reads ``curve[r]`` for any rank without refactorizing.
    """
    module = _module(model)
    linears = {n: m for n, m in compressible_linears(module).items() if n in importance}
    curves = {}
    for step, (name, layer) in enumerate(linears.items()):
        report(progress, step, len(linears), f"loss curve of {name}")
        curves[name] = predicted_loss_curve(layer.weight, importance[name], axis)
    report(progress, len(linears), len(linears), "loss curves done")
    return curves


# ---------------------------------------------------------------- plans


@dataclass
class PlannedLayer:
    """One layer of a plan: ``rank`` None means the layer stays dense."""

    name: str
    out_features: int
    in_features: int
    rank: Optional[int]
    predicted_loss: float = math.nan

    @property
    def dense(self) -> bool:
        return self.rank is None

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def params(self) -> int:
        return self.dense_params if self.rank is None else self.rank * (self.out_features + self.in_features)


@dataclass
class RankPlan:
    """Per-layer ranks under a parameter budget (counts of compressible Linear weights).

    ``ranks`` ({name: rank} of factorized layers) feeds ``compress``; ``to_json`` holds a
    top-level ``"ranks"`` object, which ``python -m lowrank compress --plan`` reads.
    """

    layers: list[PlannedLayer]
    budget: int
    strategy: str
    align: int = DEFAULT_ALIGN
    meta: dict = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, int]:
        return {layer.name: layer.rank for layer in self.layers if layer.rank is not None}

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def dense_params(self) -> int:
        return sum(layer.dense_params for layer in self.layers)

    @property
    def predicted_loss(self) -> float:
        """Sum of the layers' predicted loss increases (NaN when importance was not known)."""
        return float(sum(layer.predicted_loss for layer in self.layers))

    @property
    def within_budget(self) -> bool:
        return self.params <= self.budget

    def layer(self, name: str) -> PlannedLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this plan")

    def with_ranks(self, changes: dict[str, Optional[int]], curves: Optional[dict[str, np.ndarray]] = None) -> "RankPlan":
        """A copy with some ranks changed (None: dense), e.g. from the dashboard's rank editor.

        Ranks are checked like ``compress`` does (1 <= r, below break-even); alignment is not
        enforced. Predicted losses come from ``curves`` (:func:`layer_loss_curves`) when given,
        else they are NaN for the changed layers. The budget is kept; see ``within_budget``.
        """
        names = {layer.name for layer in self.layers}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"not layers of this plan: {unknown[:5]}")
        layers = []
        for layer in self.layers:
            if layer.name not in changes:
                layers.append(PlannedLayer(**vars(layer)))
                continue
            rank = changes[layer.name]
            if rank is not None:
                check_rank(rank, layer.out_features, layer.in_features, layer.name)
            layers.append(PlannedLayer(layer.name, layer.out_features, layer.in_features, rank,
                                       _layer_loss(curves, layer.name, rank)))
        return RankPlan(layers, self.budget, self.strategy, self.align, {**self.meta, "edited": True})

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: name, out, in, rank (None = dense), params, dense_params, predicted_loss, dense."""
        rows = [{"name": layer.name, "out": layer.out_features, "in": layer.in_features,
                 "rank": layer.rank, "params": layer.params, "dense_params": layer.dense_params,
                 "predicted_loss": layer.predicted_loss, "dense": layer.dense} for layer in self.layers]
        columns = ["name", "out", "in", "rank", "params", "dense_params", "predicted_loss", "dense"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["rank"] = frame["rank"].astype("Int64")
        return frame

    def to_dict(self) -> dict:
        def number(value: float):
            return None if not math.isfinite(value) else float(value)

        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "strategy": self.strategy, "budget": self.budget,
            "align": self.align, "params": self.params, "dense_params": self.dense_params,
            "predicted_loss": number(self.predicted_loss), "ranks": self.ranks,
            "layers": [{"name": layer.name, "out": layer.out_features, "in": layer.in_features, "rank": layer.rank,
                        "predicted_loss": number(layer.predicted_loss)} for layer in self.layers],
            "meta": _jsonable(self.meta),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: Union[str, bytes, dict]) -> "RankPlan":
        """Rebuild a plan from :meth:`to_json` output (a JSON string) or :meth:`to_dict` output (a dict)."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise ValueError(f"a rank plan must be JSON: {err}") from err
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a rank plan (expected an object with \"format\": \"{PLAN_FORMAT}\")")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unsupported rank plan version {data.get('version')!r} (this library reads {PLAN_VERSION})")
        try:
            layers = [PlannedLayer(str(row["name"]), int(row["out"]), int(row["in"]),
                                   None if row["rank"] is None else int(row["rank"]),
                                   math.nan if row.get("predicted_loss") is None else float(row["predicted_loss"]))
                      for row in data["layers"]]
            plan = cls(layers, int(data["budget"]), str(data["strategy"]), int(data.get("align", DEFAULT_ALIGN)),
                       dict(data.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed rank plan: {err!r}") from err
        for layer in plan.layers:
            if layer.rank is not None:
                check_rank(layer.rank, layer.out_features, layer.in_features, layer.name)
        if "ranks" in data and {str(k): v for k, v in data["ranks"].items()} != plan.ranks:
            raise ValueError("malformed rank plan: its 'ranks' object disagrees with its 'layers' list")
        return plan

    def save(self, path: Union[str, Path]) -> Path:
        """Write the plan as JSON, atomically."""
        path = Path(path)
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "RankPlan":
        try:
            text = Path(path).read_text()
        except FileNotFoundError as err:
            raise ValueError(f"plan file not found: {path}") from err
        return cls.from_json(text)


def _layer_loss(curves: Optional[dict[str, np.ndarray]], name: str, rank: Optional[int]) -> float:
    if curves is None or name not in curves:
        return math.nan
    curve = curves[name]
    return 0.0 if rank is None else float(curve[rank])


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)


# ---------------------------------------------------------------- layer choices and budgets


@dataclass(frozen=True)
class LayerChoices:
    """The choices of one layer: ``ranks`` (multiples of ``align`` below break-even), then dense.

    Choice ``k < len(ranks)`` is rank ``ranks[k]``; choice ``len(ranks)`` is the dense layer.
    Costs strictly increase with ``k``.
    """

    name: str
    out_features: int
    in_features: int
    ranks: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ranks) + 1

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    def rank(self, choice: int) -> Optional[int]:
        return self.ranks[choice] if choice < len(self.ranks) else None

    def costs(self) -> np.ndarray:
        width = self.out_features + self.in_features
        return np.array([r * width for r in self.ranks] + [self.dense_params], dtype=np.int64)

    def choice_of(self, rank: Optional[int]) -> int:
        return len(self.ranks) if rank is None else self.ranks.index(rank)


def layer_choices(shapes: dict[str, tuple[int, int]], align: int) -> dict[str, LayerChoices]:
    """``{name: LayerChoices}`` for ``{name: (out, in)}`` with ranks rounded to multiples of ``align``."""
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 1:
        raise ValueError(f"align must be a positive integer, got {align!r}")
    return {n: LayerChoices(n, o, i, tuple(range(align, max_useful_rank(o, i) + 1, align))) for n, (o, i) in shapes.items()}


def resolve_budget(budget: Budget, layers: dict[str, LayerChoices]) -> int:
    """Absolute parameter budget from a fraction (float in (0, 1]) or a count (int); checks it is achievable."""
    dense = sum(c.dense_params for c in layers.values())
    smallest = sum(int(c.costs()[0]) for c in layers.values())
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget must be a fraction in (0, 1] (float) or a parameter count (int), got {budget!r}")
    if isinstance(budget, (float, np.floating)):
        if not math.isfinite(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"a budget fraction must be in (0, 1], got {budget}; pass an int for an absolute parameter count")
        count = int(math.floor(float(budget) * dense))
    else:
        count = int(budget)
        if count <= 1:
            raise ValueError(f"a budget parameter count must be > 1, got {count}; pass a float in (0, 1] for a fraction")
        if count > dense:
            raise ValueError(f"budget of {count:,} parameters exceeds the {dense:,} parameters of the dense compressible layers")
    if count < smallest:
        raise ValueError(
            f"budget of {count:,} parameters ({count / dense:.1%}) is below the smallest possible plan, "
            f"{smallest:,} parameters ({smallest / dense:.1%}: every layer at its smallest aligned rank); "
            "raise the budget or lower align"
        )
    return count


# ---------------------------------------------------------------- allocation helpers shared by strategies


def _as_scores(layers: dict[str, LayerChoices], scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validated float arrays, made non-increasing: a choice scores the worst of itself and every larger choice."""
    result = {}
    for name, choices in layers.items():
        s = np.asarray(scores[name], dtype=float)
        if s.shape != (choices.count,) or not np.isfinite(s).all():
            raise ValueError(f"{name}: expected {choices.count} finite scores (one per choice), got shape {s.shape}")
        result[name] = np.maximum.accumulate(s[::-1])[::-1]
    return result


def fill_budget(layers: dict[str, LayerChoices], choice: dict[str, int], budget: int,
                priority: Callable[[str, int], float]) -> dict[str, int]:
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


def threshold_allocation(layers: dict[str, LayerChoices], budget: int, scores: dict[str, np.ndarray]) -> tuple[dict[str, int], float]:
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


def greedy_allocation(layers: dict[str, LayerChoices], budget: int,
                      losses: dict[str, np.ndarray]) -> tuple[dict[str, int], float]:
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


def _relaxed_optimum(layers: dict[str, LayerChoices], budget: int, losses: dict[str, np.ndarray],
                     hulls: dict[str, list[int]]) -> float:
    """Lowest loss of the convex relaxation within ``budget``: all hull steps by decreasing rate, the last one in part."""
    steps = []
    for name, hull in hulls.items():
        cost, loss = layers[name].costs(), losses[name]
        steps += [((loss[a] - loss[b]) / (cost[b] - cost[a]), int(cost[b] - cost[a]), loss[a] - loss[b])
                  for a, b in zip(hull, hull[1:])]
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


# ---------------------------------------------------------------- strategies


@dataclass
class AllocationContext:
    """What a strategy sees: the model, its layer choices, the absolute budget and optional inputs."""

    model: nn.Module
    loaded: object  # LoadedModel or None
    layers: dict[str, LayerChoices]
    budget: int
    align: int
    importance: Optional[dict[str, torch.Tensor]] = None
    task: object = None
    progress: Optional[Progress] = None
    axis: str = "in"
    _curves: Optional[dict[str, np.ndarray]] = None

    def weight(self, name: str) -> torch.Tensor:
        return self.model.get_submodule(name).weight.detach()

    def loss_curves(self) -> Optional[dict[str, np.ndarray]]:
        """Predicted loss curves of every layer (None without importance); computed once."""
        if self.importance is None:
            return None
        if self._curves is None:
            self._curves = layer_loss_curves(self.model, self.importance, self.axis, self.progress)
        return self._curves

    def curve_choices(self, curves: dict[str, np.ndarray], name: str) -> np.ndarray:
        """A per-rank curve read at every choice of ``name`` (dense: the value at full rank)."""
        choices = self.layers[name]
        curve = curves[name]
        return np.array([curve[r] for r in choices.ranks] + [curve[-1]], dtype=float)


@dataclass(frozen=True)
class Strategy:
    """A registered allocation strategy: ``fn(ctx, **options) -> {name: choice index}`` (or ``(choices, info)``)."""

    name: str
    fn: Callable
    description: str
    needs_importance: bool
    needs_task: bool


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, description: str, needs_importance: bool = False, needs_task: bool = False):
    """Decorator registering ``fn(ctx: AllocationContext, **options)``.

    ``fn`` returns ``{layer: choice index}`` (see :class:`LayerChoices`) or a pair
    ``(choices, info)`` with a dict of facts stored in ``plan.meta``. Shared building blocks:
    :func:`threshold_allocation`, :func:`greedy_allocation`, :func:`fill_budget`.
    """

    def decorate(fn):
        STRATEGIES[name] = Strategy(name, fn, description, needs_importance, needs_task)
        return fn

    return decorate


def available_strategies() -> list[str]:
    return sorted(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown allocation strategy {name!r}; available: {', '.join(available_strategies())}")
    return STRATEGIES[name]


@register_strategy("uniform", "Same kept fraction of parameters in every layer (the common fraction fills the budget).")
def _uniform(ctx: AllocationContext):
    scores = {n: 1.0 - c.costs() / c.dense_params for n, c in ctx.layers.items()}
    choice, threshold = threshold_allocation(ctx.layers, ctx.budget, scores)
    return choice, {"kept_fraction": 1.0 - threshold}


@register_strategy("energy", "Smallest rank keeping a common fraction of each layer's squared Frobenius norm (SVD energy).")
def _energy(ctx: AllocationContext):
    from .spectra import energy_curve, singular_values

    scores = {}
    for name, choices in ctx.layers.items():
        energy = np.append(0.0, energy_curve(singular_values(ctx.weight(name))))  # energy[r]: kept by rank r
        scores[name] = np.array([1.0 - energy[r] for r in choices.ranks] + [0.0])
    choice, threshold = threshold_allocation(ctx.layers, ctx.budget, scores)
    return choice, {"energy": 1.0 - threshold}


@register_strategy("fisher_greedy", "Global greedy on the Fisher-predicted loss increase per parameter (FWSVD spectrum).",
                   needs_importance=True)
def _fisher_greedy(ctx: AllocationContext):
    curves = ctx.loss_curves()
    losses = {n: ctx.curve_choices(curves, n) for n in ctx.layers}
    choice, bound = greedy_allocation(ctx.layers, ctx.budget, losses)
    return choice, {"predicted_loss_lower_bound": bound}


@register_strategy("sensitivity", "Measured calibration loss per layer at a few kept fractions (plain SVD, cached); "
                   "common loss threshold.", needs_task=True)
def _sensitivity(ctx: AllocationContext, fractions=DEFAULT_FRACTIONS, num_batches: int = 4, batch_size: int = 32,
                 max_length: int = 128, seed: int = 0, use_cache: bool = True):
    if ctx.loaded is None:
        raise ValueError("strategy 'sensitivity' needs a LoadedModel (with its tokenizer), not a bare nn.Module")
    table = measure_sensitivity(ctx.loaded, ctx.task, fractions, num_batches, batch_size, max_length, seed, use_cache,
                                ctx.progress)
    measured = {n: table.increase_at(n, list(c.ranks)) for n, c in ctx.layers.items()}
    worst = max(float(np.nanmax(np.append(s, 0.0))) for s in measured.values())
    scores = {}
    for name, s in measured.items():
        # unmeasured ranks (below the smallest measured fraction) score above every measured value
        smallest, below = table.ranks[name][0], np.isnan(s)
        s[below] = worst + 1.0 + (smallest - np.asarray(ctx.layers[name].ranks)[below]) / smallest
        scores[name] = np.append(s, 0.0)
    choice, threshold = threshold_allocation(ctx.layers, ctx.budget, scores)
    return choice, {"loss_threshold": threshold, "baseline_loss": table.baseline_loss,
                    "calibration": {"fractions": list(table.fractions), "num_batches": num_batches,
                                    "batch_size": batch_size, "examples": table.examples}}


# ---------------------------------------------------------------- measured sensitivity


@dataclass
class Sensitivity:
    """Calibration loss with one layer at a time replaced by its rank-r SVD truncation.

    ``ranks[name]`` / ``losses[name]``: measured ranks and mean losses; ``baseline_loss``:
    the dense model's loss on the same batches.
    """

    baseline_loss: float
    fractions: tuple[float, ...]
    ranks: dict[str, list[int]]
    losses: dict[str, list[float]]
    shapes: dict[str, tuple[int, int]]
    examples: int

    def increase_at(self, name: str, ranks: list[int]) -> np.ndarray:
        """Loss increase over the dense model at ``ranks``: linear in rank between measured points
        and 0 at full rank; NaN below the smallest measured rank (not measured, not guessed)."""
        xs = np.array(self.ranks[name] + [min(self.shapes[name])], dtype=float)
        ys = np.array([loss - self.baseline_loss for loss in self.losses[name]] + [0.0])
        wanted = np.asarray(ranks, dtype=float)
        return np.where(wanted < xs[0], np.nan, np.interp(wanted, xs, ys))

    def to_frame(self) -> pd.DataFrame:
        rows = [{"name": n, "rank": r, "loss": loss, "increase": loss - self.baseline_loss}
                for n in self.ranks for r, loss in zip(self.ranks[n], self.losses[n])]
        return pd.DataFrame(rows, columns=["name", "rank", "loss", "increase"])

    def to_dict(self) -> dict:
        return {"baseline_loss": self.baseline_loss, "fractions": list(self.fractions), "ranks": self.ranks,
                "losses": self.losses, "shapes": {n: list(s) for n, s in self.shapes.items()}, "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict) -> "Sensitivity":
        return cls(float(data["baseline_loss"]), tuple(data["fractions"]), {n: list(r) for n, r in data["ranks"].items()},
                   {n: list(v) for n, v in data["losses"].items()}, {n: tuple(s) for n, s in data["shapes"].items()},
                   int(data["examples"]))


def sensitivity_cache_path(loaded, task, settings: dict) -> Path:
    from .fisher import weights_fingerprint

    key = json.dumps({"model": loaded.name, "weights": weights_fingerprint(loaded.model), "task": task.name,
                      "task_source": task.source, "sizes": task.sizes(), **settings}, sort_keys=True)
    return cache_dir() / "sensitivity" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def measure_sensitivity(loaded, task, fractions=DEFAULT_FRACTIONS, num_batches: int = 4, batch_size: int = 32,
                        max_length: int = 128, seed: int = 0, use_cache: bool = True,
                        progress: Optional[Progress] = None) -> Sensitivity:
    """Measure, for every compressible layer alone and every kept ``fraction``, the mean loss of
    ``num_batches`` shuffled batches of the task's train split with that layer replaced by its
    plain SVD truncation (rank ``floor(f * out * in / (out + in))``, skipped at/above break-even).

    Cost: one SVD per layer and ``layers x fractions + 1`` passes over the calibration batches.
    Cached as JSON under ``<cache>/sensitivity/``, keyed by the weights fingerprint, the task and
    the settings. The model's weights are restored exactly afterwards (also on error).
    """
    from .compress import fraction_rank
    from .data import batches, load_task

    if task is None:
        raise ValueError("strategy 'sensitivity' needs a task for its calibration batches (e.g. task='rotten_tomatoes')")
    fractions = tuple(sorted(float(f) for f in fractions))
    if not fractions or not all(0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"sensitivity fractions must be in (0, 1), got {fractions}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError("num_batches and batch_size must be positive")
    task = load_task(task)
    if loaded.kind not in ("classifier", "causal-lm"):
        raise ValueError(f"{loaded.name} is a {loaded.kind}: sensitivity needs a loss (a classifier or a causal LM)")
    settings = {"fractions": list(fractions), "num_batches": num_batches, "batch_size": batch_size,
                "max_length": max_length, "seed": seed, "split": "train"}
    path = sensitivity_cache_path(loaded, task, settings)
    if use_cache and path.exists():
        return Sensitivity.from_dict(json.loads(path.read_text()))
    model, device = loaded.model, loaded.device
    calibration = [{k: v.to(device) for k, v in b.items()}
                   for b in batches(task, loaded.tokenizer, "train", batch_size, max_length, shuffle=True, seed=seed,
                                    limit=num_batches)]
    sizes = [int(b["input_ids"].shape[0]) for b in calibration]

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(model(**b).loss) * n for b, n in zip(calibration, sizes)) / sum(sizes)

    linears = compressible_linears(model)
    was_training = model.training
    model.eval()
    ranks, losses, shapes = {}, {}, {}
    try:
        baseline = mean_loss()
        for step, (name, layer) in enumerate(linears.items()):
            report(progress, step, len(linears), f"sensitivity of {name}")
            out_f, in_f = layer.weight.shape
            shapes[name] = (out_f, in_f)
            wanted = sorted({r for r in (fraction_rank(out_f, in_f, f) for f in fractions) if r is not None})
            original = layer.weight.detach().clone()
            U, S, Vh = torch.linalg.svd(original.float(), full_matrices=False)
            ranks[name], losses[name] = wanted, []
            try:
                for r in wanted:
                    with torch.no_grad():
                        layer.weight.copy_(((U[:, :r] * S[:r]) @ Vh[:r]).to(original.dtype))
                    losses[name].append(mean_loss())
            finally:
                with torch.no_grad():
                    layer.weight.copy_(original)
    finally:
        model.train(was_training)
    report(progress, len(linears), len(linears), "sensitivity done")
    missing = [n for n, r in ranks.items() if not r]
    if missing:
        raise ValueError(f"no sensitivity fraction gives a rank below break-even for {missing[:3]}; use smaller fractions")
    table = Sensitivity(baseline, fractions, ranks, losses, shapes, sum(sizes))
    if use_cache:
        atomic_write_bytes(path, json.dumps(table.to_dict()).encode())
    return table


# ---------------------------------------------------------------- entry point


def _module(model) -> nn.Module:
    return model.model if hasattr(model, "tokenizer") and hasattr(model, "model") else model


def allocate(model, budget: Budget, strategy: str = "fisher_greedy", importance: Optional[dict[str, torch.Tensor]] = None,
             align: int = DEFAULT_ALIGN, task=None, axis: str = "in", progress: Optional[Progress] = None,
             **options) -> RankPlan:
    """Per-layer ranks for the compressible layers of ``model`` (a ``LoadedModel`` or ``nn.Module``).

    ``budget``: fraction in (0, 1] (float) of the dense compressible parameters, or an absolute
    count (int). ``strategy``: one of :func:`available_strategies`. ``importance``:
    ``{name: F}`` (e.g. ``estimate_fisher``), needed by ``fisher_greedy`` and used by every
    strategy to report predicted losses. ``align``: ranks are multiples of it (1 allowed); a layer
    whose choice is at/above break-even stays dense. ``task``: calibration data for
    ``sensitivity``. ``axis``: FWSVD orientation of the predicted loss. ``options`` go to the
    strategy (``sensitivity``: fractions, num_batches, batch_size, max_length, seed, use_cache).

    Guarantee: ``plan.params <= budget`` and ``budget - plan.params`` is smaller than the
    largest single step ``align * (out + in)`` (module docstring). Raises ``ValueError`` for an
    unknown strategy or option, a bad or unachievable budget, or missing importance / task.
    """
    from .compress import linear_shapes

    spec = get_strategy(strategy)
    module = _module(model)
    loaded = model if module is not model else None
    shapes = linear_shapes(module)
    if not shapes:
        raise ValueError("this model has no compressible dense Linear layers to allocate ranks to")
    layers = layer_choices(shapes, align)
    absolute = resolve_budget(budget, layers)
    if importance is not None:
        importance = {n: importance[n] for n in shapes if n in importance}
    if spec.needs_importance:
        missing = [n for n in shapes if importance is None or n not in importance]
        if missing:
            raise ValueError(f"strategy {strategy!r} needs importance (e.g. lowrank.fisher.estimate_fisher) for every "
                             f"layer; missing {len(missing)}: {missing[:3]}")
    if spec.needs_task and task is None:
        raise ValueError(f"strategy {strategy!r} needs a task for its calibration batches (e.g. task='rotten_tomatoes')")
    try:
        inspect.signature(spec.fn).bind(None, **options)
    except TypeError as err:
        raise ValueError(f"strategy {strategy!r} does not take option(s) {sorted(options)}: {err}") from err
    ctx = AllocationContext(module, loaded, layers, absolute, int(align), importance, task, progress, axis)
    start = time.perf_counter()
    result = spec.fn(ctx, **options)
    seconds = time.perf_counter() - start
    choice, info = result if isinstance(result, tuple) else (result, {})
    unknown = sorted(set(choice) ^ set(layers))
    if unknown:
        raise ValueError(f"strategy {strategy!r} returned choices for the wrong layers: {unknown[:3]}")
    curves = ctx.loss_curves()
    planned = []
    for name, choices in layers.items():
        k = int(choice[name])
        if not 0 <= k < choices.count:
            raise ValueError(f"strategy {strategy!r} returned choice {k} for {name}, which has {choices.count}")
        rank = choices.rank(k)
        planned.append(PlannedLayer(name, choices.out_features, choices.in_features, rank, _layer_loss(curves, name, rank)))
    dense = sum(c.dense_params for c in layers.values())
    meta = {"model": getattr(loaded, "name", "") or getattr(getattr(module, "config", None), "_name_or_path", ""),
            "budget_fraction": absolute / dense, "seconds": seconds, "axis": axis, **info,
            "options": {k: v for k, v in options.items()}}
    if task is not None:
        meta["task"] = getattr(task, "name", str(task))
    plan = RankPlan(planned, absolute, strategy, int(align), meta)
    if plan.params > absolute:
        raise ValueError(f"strategy {strategy!r} exceeded the budget: {plan.params:,} > {absolute:,} parameters")
    return plan


def parse_budget(text: str) -> Budget:
    """``"0.5"`` or ``"50%"`` -> fraction 0.5; ``"4000000"`` -> count 4,000,000 (for the command line)."""
    value = str(text).strip()
    try:
        if value.endswith("%"):
            return float(value[:-1]) / 100.0
        if value.isdigit():
            return int(value)
        return float(value)
    except ValueError as err:
        raise ValueError(f"budget must be a fraction (0.5), a percentage (50%) or a parameter count (4000000), got {text!r}") from err
