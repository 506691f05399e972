"""Allocation strategies (registry :data:`STRATEGIES`) and :func:`allocate`, which runs one.

``allocate(model, budget, strategy)`` returns a :class:`~lowrank.allocation.plan.RankPlan` for
``compress(model, plan.ranks, method=...)``. Built in (extend with :func:`register_strategy`), by a common
threshold: ``uniform`` (one kept fraction of parameters), ``energy`` (one kept fraction of SVD energy),
``sensitivity`` (measured loss of each layer truncated alone, :mod:`~lowrank.allocation.sensitivity`); by the
convex-hull greedy: ``fisher_greedy`` and ``kfac_greedy`` (diagonal-Fisher or K-FAC predicted loss increase,
:mod:`~lowrank.allocation.curves`) and ``measured_greedy`` (measured loss of each layer factorized alone by a
method, LEMS-like; the method's statistics come in ``stats``). Every plan ends with the fill step: ``plan.params <= budget`` and
``budget - plan.params < max_l align (out_l + in_l)``. Cost: at most one set of singular values per layer
(``sensitivity``: one calibration loss per layer and fraction).
Details: docs/methods.md#rank-allocation-lowrankallocation.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.allocation.budget import greedy_allocation, threshold_allocation
from lowrank.allocation.choices import Budget, LayerChoices, layer_choices, resolve_budget
from lowrank.allocation.curves import kfac_loss_curves, layer_loss_curves, loss_at
from lowrank.allocation.plan import PlannedLayer, RankPlan
from lowrank.allocation.sensitivity import DEFAULT_FRACTIONS, measure_sensitivity
from lowrank.analysis.spectra import energy_curve, singular_values
from lowrank.loaded import unwrap
from lowrank.progress import Progress
from lowrank.ranks import linear_shapes
from lowrank.statistics.resolve import select

# Kept fractions measured_greedy measures at: the range budgets of 40-90% kept spread layers over.
MEASURED_FRACTIONS = (0.2, 0.4, 0.6, 0.8)
# The default strategy. fisher_greedy lost to uniform on a task it was not tuned on
# (docs/results/allocation.md); a strategy becomes the default only once it is at least as accurate as uniform on
# every task of the suite.
DEFAULT_STRATEGY = "uniform"


@dataclass
class AllocationContext:
    """What a strategy sees: the model, its layer choices, the absolute budget and optional inputs."""

    model: nn.Module
    loaded: object  # LoadedModel or None
    layers: dict[str, LayerChoices]
    budget: int
    align: int
    importance: dict[str, torch.Tensor] | None = None
    task: object = None
    progress: Progress | None = None
    axis: str = "in"
    stats: dict | None = None  # {layer: {key: tensor}} from statistics_for (moments for kfac_greedy)
    _curves: dict[str, np.ndarray] | None = None

    def weight(self, name: str) -> torch.Tensor:
        return self.model.get_submodule(name).weight.detach()

    def loss_curves(self) -> dict[str, np.ndarray] | None:
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
    needs: tuple[str, ...]  # statistic kinds (lowrank.statistics.STATISTIC_KINDS), e.g. ("fisher",)
    needs_task: bool  # calibration batches of its own (sensitivity)
    curves: Callable | None = None  # ctx -> {layer: curve[r], r = 0 .. min(out, in)}: what it optimizes, per rank
    metric: str = ""  # what the curves measure, in words (e.g. "K-FAC-predicted loss increase (nats)")

    @property
    def needs_importance(self) -> bool:
        return "fisher" in self.needs


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(
    name: str,
    description: str,
    needs: tuple[str, ...] = (),
    needs_task: bool = False,
    curves: Callable | None = None,
    metric: str = "",
):
    """Decorator registering ``fn(ctx: AllocationContext, **options)``.

    ``fn`` returns ``{layer: choice index}`` (see :class:`~lowrank.allocation.choices.LayerChoices`)
    or a pair ``(choices, info)`` with a dict of facts stored in ``plan.meta``. ``curves(ctx)``, when the strategy
    scores ranks by a per-rank curve, returns ``{layer: curve}`` with ``curve[r]`` for r = 0 .. min(out, in), the
    one curve ``fn`` reads (:func:`strategy_curves`); ``metric`` says what it measures. Shared building
    blocks: :mod:`lowrank.allocation.budget`.
    """

    def decorate(fn):
        STRATEGIES[name] = Strategy(name, fn, description, tuple(needs), needs_task, curves, metric)
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


def _dropped_energy(ctx: AllocationContext) -> dict[str, np.ndarray]:
    """``curve[r] = 1 - e_r``: the fraction of ``||W||_F^2`` a rank-r truncation drops (``e_0 = 0``)."""
    return {n: 1.0 - np.append(0.0, energy_curve(singular_values(ctx.weight(n)))) for n in ctx.layers}


def _kfac_curves(ctx: AllocationContext) -> dict[str, np.ndarray]:
    return kfac_loss_curves(ctx.model, ctx.stats or {}, ctx.progress)


@register_strategy(
    "energy",
    "Smallest rank keeping a common fraction of each layer's squared Frobenius norm (SVD energy).",
    curves=_dropped_energy,
    metric="fraction of the SVD energy dropped",
)
def _energy(ctx: AllocationContext):
    curves = _dropped_energy(ctx)
    scores = {n: ctx.curve_choices(curves, n) for n in ctx.layers}
    choice, threshold = threshold_allocation(ctx.layers, ctx.budget, scores)
    return choice, {"energy": 1.0 - threshold}


@register_strategy(
    "fisher_greedy",
    "Global greedy on the Fisher-predicted loss increase per parameter (FWSVD spectrum).",
    needs=("fisher",),
    curves=AllocationContext.loss_curves,
    metric="diagonal-Fisher predicted loss increase (nats)",
)
def _fisher_greedy(ctx: AllocationContext):
    curves = ctx.loss_curves()
    losses = {n: ctx.curve_choices(curves, n) for n in ctx.layers}
    choice, bound = greedy_allocation(ctx.layers, ctx.budget, losses)
    return choice, {"predicted_loss_lower_bound": bound}


@register_strategy(
    "kfac_greedy",
    "Global greedy on the K-FAC-predicted loss increase per parameter (kfac_svd spectrum: "
    "input and gradient correlations).",
    needs=("activations", "gradients"),
    curves=_kfac_curves,
    metric="K-FAC-predicted loss increase (nats)",
)
def _kfac_greedy(ctx: AllocationContext):
    curves = _kfac_curves(ctx)
    losses = {n: ctx.curve_choices(curves, n) for n in ctx.layers}
    choice, bound = greedy_allocation(ctx.layers, ctx.budget, losses)
    return choice, {"kfac_loss_lower_bound": bound}


def _measured(ctx: AllocationContext, name: str, method: str, settings: dict):
    """The measured table (:func:`measure_sensitivity`) read at every choice of every layer, as loss increases;
    a rank below the smallest measured one scores above every measured value (growing as the rank falls)."""
    if ctx.loaded is None:
        raise ValueError(f"strategy {name!r} needs a LoadedModel (with its tokenizer), not a bare nn.Module")
    stats = ctx.stats if method != "svd" else None
    table = measure_sensitivity(ctx.loaded, ctx.task, progress=ctx.progress, method=method, stats=stats, **settings)
    measured = {n: table.increase_at(n, list(c.ranks)) for n, c in ctx.layers.items()}
    worst = max(float(np.nanmax(np.append(s, 0.0))) for s in measured.values())
    scores = {}
    for layer, s in measured.items():
        smallest, below = table.ranks[layer][0], np.isnan(s)
        s[below] = worst + 1.0 + (smallest - np.asarray(ctx.layers[layer].ranks)[below]) / smallest
        scores[layer] = np.append(s, 0.0)
    calibration = {**settings, "fractions": list(table.fractions), "examples": table.examples, "method": method}
    calibration.pop("use_cache", None)
    return scores, table, calibration


@register_strategy(
    "sensitivity",
    "Measured calibration loss per layer at a few kept fractions (plain SVD, cached); common loss threshold.",
    needs_task=True,
)
def _sensitivity(
    ctx: AllocationContext,
    fractions=DEFAULT_FRACTIONS,
    num_batches: int = 4,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    use_cache: bool = True,
):
    settings = dict(fractions=fractions, num_batches=num_batches, batch_size=batch_size, max_length=max_length)
    scores, table, calibration = _measured(ctx, "sensitivity", "svd", settings | {"seed": seed, "use_cache": use_cache})
    choice, threshold = threshold_allocation(ctx.layers, ctx.budget, scores)
    calibration.pop("method")
    return choice, {"loss_threshold": threshold, "baseline_loss": table.baseline_loss, "calibration": calibration}


@register_strategy(
    "measured_greedy",
    "LEMS-like: measured calibration loss of each layer factorized alone by a method (default kfac_svd, on its "
    "statistics) at a few kept fractions; global greedy on the loss increase per parameter (convex hull).",
    needs=("activations", "gradients"),
    needs_task=True,
)
def _measured_greedy(
    ctx: AllocationContext,
    method: str = "kfac_svd",
    fractions=MEASURED_FRACTIONS,
    num_batches: int = 2,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
    use_cache: bool = True,
):
    settings = dict(fractions=fractions, num_batches=num_batches, batch_size=batch_size, max_length=max_length)
    scores, table, calibration = _measured(
        ctx, "measured_greedy", method, settings | {"seed": seed, "use_cache": use_cache}
    )
    scores = {n: np.maximum.accumulate(s[::-1])[::-1] for n, s in scores.items()}  # more rank never costs loss
    choice, bound = greedy_allocation(ctx.layers, ctx.budget, scores)
    return choice, {
        "measured_loss_lower_bound": bound,
        "baseline_loss": table.baseline_loss,
        "calibration": calibration,
    }


def allocate(
    model,
    budget: Budget,
    strategy: str = DEFAULT_STRATEGY,
    importance: dict[str, torch.Tensor] | None = None,
    align: int = DEFAULT_ALIGN,
    stats: dict | None = None,
    task=None,
    axis: str = "in",
    progress: Progress | None = None,
    **options,
) -> RankPlan:
    """Per-layer ranks for the compressible layers of ``model`` (a ``LoadedModel`` or ``nn.Module``).

    ``budget``: fraction in (0, 1] (float) of the dense compressible parameters, or an absolute
    count (int). ``strategy``: one of :func:`available_strategies`. ``stats``: per-layer
    statistics ``{layer: {"fisher": F, ...}}`` from :func:`lowrank.statistics.statistics_for`
    (or the shorthand ``importance``, ``{layer: F}``, which wins when both are given): the Fisher
    maps are needed by ``fisher_greedy`` and used by every strategy to report predicted
    losses; the moments by ``kfac_greedy``. ``align``: ranks are multiples of it (1 allowed); a layer whose choice is at/above
    break-even stays dense. ``task``: calibration data for ``sensitivity``. ``axis``: FWSVD
    orientation of the predicted loss. ``options`` go to the strategy (``sensitivity``:
    fractions, num_batches, batch_size, max_length, seed, use_cache).

    Guarantee: ``plan.params <= budget`` and ``budget - plan.params`` is smaller than the
    largest single step ``align * (out + in)`` (:mod:`lowrank.allocation.budget`). Raises
    ``ValueError`` for an unknown strategy or option, a bad or unachievable budget, or missing
    importance / task.
    """
    spec = get_strategy(strategy)
    module, loaded = unwrap(model)
    shapes = linear_shapes(module)
    if not shapes:
        raise ValueError("this model has no compressible dense Linear layers to allocate ranks to")
    layers = layer_choices(shapes, align)
    absolute = resolve_budget(budget, layers)
    importance = _importance(shapes, importance, stats)
    if spec.needs_importance:
        missing = [n for n in shapes if importance is None or n not in importance]
        if missing:
            raise ValueError(
                f"strategy {strategy!r} needs importance (Fisher information, from "
                f"lowrank.statistics.statistics_for) for every layer; missing {len(missing)}: {missing[:3]}"
            )
    if spec.needs_task and task is None:
        raise ValueError(
            f"strategy {strategy!r} needs a task for its calibration batches (e.g. task='rotten_tomatoes')"
        )
    try:
        inspect.signature(spec.fn).bind(None, **options)
    except TypeError as err:
        raise ValueError(f"strategy {strategy!r} does not take option(s) {sorted(options)}: {err}") from err
    ctx = AllocationContext(module, loaded, layers, absolute, int(align), importance, task, progress, axis, stats)
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
        planned.append(PlannedLayer(name, choices.out_features, choices.in_features, rank, loss_at(curves, name, rank)))
    dense = sum(c.dense_params for c in layers.values())
    meta = {
        "model": getattr(loaded, "name", "") or getattr(getattr(module, "config", None), "_name_or_path", ""),
        "budget_fraction": absolute / dense,
        "seconds": seconds,
        "axis": axis,
        **info,
        "options": dict(options),
    }
    if task is not None:
        meta["task"] = getattr(task, "name", str(task))
    plan = RankPlan(planned, absolute, strategy, int(align), meta)
    if plan.params > absolute:
        raise ValueError(f"strategy {strategy!r} exceeded the budget: {plan.params:,} > {absolute:,} parameters")
    return plan


def _importance(shapes: dict, importance: dict | None, stats: dict | None) -> dict | None:
    """The Fisher maps of the layers of ``shapes``: ``importance`` when given, else those in ``stats``."""
    if importance is None and stats:
        importance = select(stats, "fisher") or None
    return None if importance is None else {n: importance[n] for n in shapes if n in importance}


def strategy_curves(
    model,
    strategy: str,
    stats: dict | None = None,
    importance: dict[str, torch.Tensor] | None = None,
    axis: str = "in",
    progress: Progress | None = None,
) -> dict[str, np.ndarray] | None:
    """``{layer: curve}``, ``curve[r]`` for r = 0 .. min(out, in): the per-rank curve ``strategy`` itself reads
    (``kfac_greedy``: the K-FAC-predicted loss increase; ``fisher_greedy``: the diagonal-Fisher one; ``energy``: the
    dropped SVD energy ``1 - e_r``), read at its choices by :meth:`AllocationContext.curve_choices`. ``None`` for a
    strategy that scores no per-rank curve (``uniform``, ``sensitivity``). ``stats`` as in :func:`allocate`;
    ``ValueError`` when the statistics the curve needs are missing."""
    spec = get_strategy(strategy)
    if spec.curves is None:
        return None
    module, loaded = unwrap(model)
    shapes = linear_shapes(module)
    importance = _importance(shapes, importance, stats)
    if spec.needs_importance and (importance is None or set(shapes) - set(importance)):
        raise ValueError(f"the curves of {strategy!r} need the Fisher information of every layer")
    layers = layer_choices(shapes, 1)
    ctx = AllocationContext(module, loaded, layers, 0, 1, importance, None, progress, axis, stats)
    return spec.curves(ctx)
