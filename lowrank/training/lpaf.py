"""LPAF (Ren & Zhu 2023): low-rank prune-and-factorize, and the rank analysis behind it.

Fine-tuned weights are close to full rank, while first-order pruning leaves weights that are sparse and low
rank (:func:`rank_analysis` measures it). :func:`lpaf` (settings :class:`LpafConfig`): prune to sparsity ``s``
while fine-tuning (:mod:`lowrank.training.prune`) -> factorize each ``W ⊙ M`` at rank ``r``
(``sparsity_aware``, the paper's stage: ``min sum_ij M_ij S_ij (W - U V)_ij^2``; ``svd``; or, ours, ``fwsvd`` /
``tfwsvd`` with the pruned model's Fisher) -> mixed-rank fine-tuning (:mod:`lowrank.training.mixed`) ->
evaluation. Reconstruction: the default sparsity ``s = 1 - f`` for a kept fraction ``f``
(:func:`default_sparsity`) is ours. Cost: up to two fine-tuning runs (pruning, then mixed-rank)
and one factorization per layer.
Details: docs/methods.md#lpaf-prune-then-factorize; measurements: docs/results/lpaf.md.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from lowrank.analysis.spectra import rank_statistics, singular_values
from lowrank.compress import compress, low_rank_layers
from lowrank.data.tasks import load_task
from lowrank.evaluation import evaluate
from lowrank.loaded import module_of
from lowrank.models.architectures import compressible_linears, layer_type
from lowrank.progress import Progress, report, scaled
from lowrank.ranks import Ranks, resolve_ranks
from lowrank.statistics import DEFAULT, StatisticsSettings, select, statistics_for
from lowrank.training.finetune import TrainConfig, train
from lowrank.training.mixed import SCHEDULES, MixedRankAnnealing, finalize, to_mixed_rank
from lowrank.training.prune import PRUNE_CONFIG, PRUNE_METHODS, SCOPES, SCORE_UPDATES, prune

RANK_COLUMNS = ("numerical_rank", "effective_rank", "stable_rank", "rank90", "rank95", "rank99")
FINETUNE_CONFIG = TrainConfig(epochs=2.0, lr=8e-5, batch_size=32, max_length=64)
FACTORIZATIONS = ("sparsity_aware", "svd", "fwsvd", "tfwsvd")
FISHER_FACTORIZATIONS = ("fwsvd", "tfwsvd")


# ----------------------------------------------------------------------------- rank analysis


def rank_analysis(model, tol: float = 1e-3, progress: Progress | None = None) -> pd.DataFrame:
    """One row per compressible matrix: name, type, out, in, sparsity (fraction of exact zeros),
    the rank statistics of :func:`lowrank.analysis.spectra.rank_statistics` at relative tolerance ``tol``
    (numerical rank ``#{s_i > tol s_1}``, effective, stable, 90/95/99% energy ranks) and each
    rank divided by ``min(out, in)`` (``rel_*`` columns). Cost: one SVD per matrix.
    """
    model = module_of(model)
    linears = compressible_linears(model)
    rows = []
    for i, (name, module) in enumerate(linears.items()):
        report(progress, i, len(linears), f"ranks of {name}")
        weight = module.weight.detach()
        full = min(weight.shape)
        stats = rank_statistics(singular_values(weight), tol)
        rows.append(
            {
                "name": name,
                "type": layer_type(model, name),
                "out": weight.shape[0],
                "in": weight.shape[1],
                "sparsity": float((weight == 0).float().mean()),
                **stats,
                **{f"rel_{k}": stats[k] / full for k in RANK_COLUMNS},
            }
        )
    report(progress, len(linears), len(linears), "ranks done")
    return pd.DataFrame(rows)


def average_ranks(frame: pd.DataFrame) -> dict:
    """Means over matrices of every rank column (absolute and relative); ``sparsity`` is the overall
    fraction of zeros (weighted by matrix size)."""
    columns = [*RANK_COLUMNS, *(f"rel_{k}" for k in RANK_COLUMNS)]
    size = frame["out"] * frame["in"]
    return {
        "sparsity": float((frame["sparsity"] * size).sum() / size.sum()),
        **{c: float(frame[c].mean()) for c in columns},
    }


# ----------------------------------------------------------------------------- pipeline stages


def kept_fraction(model, plan: dict[str, int]) -> float:
    """Parameters of the factorized layers after factorization over their dense parameters."""
    model = module_of(model)
    linears = compressible_linears(model)
    dense = sum(linears[n].weight.numel() for n in plan)
    kept = sum(r * sum(linears[n].weight.shape) for n, r in plan.items())
    return kept / dense if dense else 1.0


def default_sparsity(model, ranks: Ranks) -> float:
    """``1 - f`` with ``f`` the parameter fraction the factorization keeps: the sparse model then has as many
    non-zeros as the factorized model has parameters (a reconstruction; the paper's setting is not available)."""
    plan = resolve_ranks(module_of(model), ranks)
    if not plan:
        raise ValueError("the rank plan factorizes no layer (kept fraction 1.0?); nothing to prune and factorize")
    return 1.0 - kept_fraction(model, plan)


def sparsity_importance(
    masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Importance ``M ⊙ S`` for the ``sparsity_aware`` method: exactly 0 on pruned entries.

    Without ``scores``: the mask itself (``S = 1``). With scores (movement scores may be
    negative, so they cannot be used raw): ``S = 1 + q`` where ``q`` in [0, 1) is the rank of an
    entry's score among the kept entries of its matrix divided by their number, so kept
    entries weigh between 1 and 2, increasing with their score. (A bounded, scale-free
    weighting chosen here; a reconstruction.)
    """
    importance = {}
    for name, mask in masks.items():
        m = mask.float()
        if scores is None:
            importance[name] = m
            continue
        kept = mask.flatten().nonzero().flatten()
        q = torch.zeros(mask.numel(), device=mask.device)
        order = scores[name].flatten()[kept].float().argsort()
        q[kept[order]] = torch.arange(len(kept), device=mask.device, dtype=torch.float32) / max(1, len(kept))
        importance[name] = m * (1.0 + q.view_as(m))
    return importance


def _check_factorization(factorization: str, score_weighting: bool) -> None:
    if factorization not in FACTORIZATIONS:
        raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
    if score_weighting and factorization != "sparsity_aware":
        raise ValueError("score weighting applies to the sparsity_aware factorization only")


def factorize_pruned(
    pruned,
    masks: dict[str, torch.Tensor],
    ranks: Ranks,
    factorization: str = "sparsity_aware",
    scores: dict[str, torch.Tensor] | None = None,
    importance: dict[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
    **options,
):
    """Factorize a pruned model (returns a new ``LoadedModel``; ``pruned`` is untouched).

    ``factorization`` (see the module docstring): ``"sparsity_aware"`` with importance from
    :func:`sparsity_importance` (``scores`` optional); ``"svd"``; ``"fwsvd"`` / ``"tfwsvd"`` with
    ``importance`` = the Fisher of the pruned model (:func:`lowrank.statistics.statistics_for`).
    ``options`` go to the method.
    """
    _check_factorization(factorization, scores is not None)
    if factorization == "svd":
        return compress(pruned, ranks, method="svd", progress=progress)
    if factorization in FISHER_FACTORIZATIONS:
        if importance is None:
            raise ValueError(f"factorization {factorization!r} needs importance: the Fisher of the pruned model")
        return compress(pruned, ranks, method=factorization, importance=importance, progress=progress, **options)

    plan = resolve_ranks(pruned.model, ranks)
    missing = [n for n in plan if n not in masks]
    if missing:
        raise ValueError(f"no pruning mask for layers {missing[:3]}; prune every layer that is factorized")
    importance = sparsity_importance(
        {n: masks[n] for n in plan}, None if scores is None else {n: scores[n] for n in plan}
    )
    return compress(pruned, plan, method="sparsity_aware", importance=importance, progress=progress, **options)


def mixed_rank_finetune(
    compressed,
    pruned,
    masks: dict[str, torch.Tensor],
    task,
    config: TrainConfig,
    p0: float = 0.5,
    schedule: str = "linear",
    until: float = 1.0,
    progress: Progress | None = None,
) -> tuple[list[float], list[float]]:
    """Mixed-rank fine-tuning of ``compressed`` in place, then :func:`lowrank.training.mixed.finalize`.

    ``pruned``: the pruned model whose sparse weights give the sparse paths.
    Returns (losses, probability after each step).
    """
    dense = compressible_linears(pruned.model)
    layers = low_rank_layers(compressed.model)
    to_mixed_rank(compressed.model, {n: dense[n].weight.detach() for n in layers}, masks)
    hook = MixedRankAnnealing(p0, schedule, until)
    try:
        losses = train(compressed.model, compressed.tokenizer, load_task(task), config, hooks=[hook], progress=progress)
    finally:
        finalize(compressed.model)
    return losses, hook.history


@dataclass(frozen=True)
class LpafConfig:
    """Settings of :func:`lpaf`, validated on construction (and by :meth:`with_`).

    * ``sparsity``: pruning target in (0, 1); ``None``: :func:`default_sparsity` of ``ranks``.
      Ignored when :func:`lpaf` is given masks (the pruning stage is skipped).
    * ``ranks``: as in :func:`lowrank.compress.compress` (a kept fraction or ``{layer: rank}``).
    * ``prune_config`` / ``finetune_config``: training of the pruning stage and of the
      (mixed-rank) fine-tuning after factorization; defaults :data:`lowrank.training.prune.PRUNE_CONFIG`
      and :data:`FINETUNE_CONFIG` (copies).
    * ``factorization``: one of :data:`FACTORIZATIONS` (see :func:`factorize_pruned`).
    * ``mixed_rank``, ``p0``, ``schedule``: mixed-rank fine-tuning, the sparse path's initial
      probability and its annealing (:data:`lowrank.training.mixed.SCHEDULES`); ``mixed_rank=False``:
      plain fine-tuning of the factorized model.
    * ``prune_method``, ``scope``, ``score_update``: as in :func:`lowrank.training.prune.prune`.
    * ``score_weighting``: weight kept entries by their pruning-score rank
      (:func:`sparsity_importance`; ``sparsity_aware`` only, needs the pruning stage).
    * ``statistics``: sampling of the pruned model's Fisher for ``fwsvd`` / ``tfwsvd``.
    * ``eval_limit``: evaluate on at most this many validation batches (``None``: all).
    * ``options``: keyword arguments of the factorization method (copied; not mutated).
    """

    sparsity: float | None = None
    ranks: Ranks = 0.5
    prune_config: TrainConfig = field(default_factory=lambda: replace(PRUNE_CONFIG))
    finetune_config: TrainConfig = field(default_factory=lambda: replace(FINETUNE_CONFIG))
    factorization: str = "sparsity_aware"
    mixed_rank: bool = True
    p0: float = 0.5
    schedule: str = "linear"
    prune_method: str = "movement"
    scope: str = "global"
    score_update: str = "raw"
    score_weighting: bool = False
    statistics: StatisticsSettings = DEFAULT
    eval_limit: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_factorization(self.factorization, self.score_weighting)
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        for name in ("prune_config", "finetune_config"):
            if not isinstance(getattr(self, name), TrainConfig):
                raise TypeError(f"{name} must be a TrainConfig, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.statistics, StatisticsSettings):
            raise TypeError(f"statistics must be a StatisticsSettings, got {type(self.statistics).__name__}")
        for name, value, allowed in (
            ("prune_method", self.prune_method, PRUNE_METHODS),
            ("scope", self.scope, SCOPES),
            ("score_update", self.score_update, SCORE_UPDATES),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.p0 <= 1.0:
            raise ValueError(f"p0 must be in [0, 1], got {self.p0}")
        if self.eval_limit is not None and (
            isinstance(self.eval_limit, bool) or not isinstance(self.eval_limit, int) or self.eval_limit < 1
        ):
            raise ValueError(f"eval_limit must be a positive integer or None, got {self.eval_limit!r}")
        if not isinstance(self.options, dict):
            raise TypeError(
                f"options must be a dict of factorization keyword arguments, got {type(self.options).__name__}"
            )
        object.__setattr__(self, "options", dict(self.options))

    def with_(self, **changes) -> LpafConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


def lpaf(
    loaded,
    task,
    config: LpafConfig = LpafConfig(),
    masks: dict[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
):
    """Prune -> (sparsity-aware) factorization -> mixed-rank fine-tuning -> evaluation.

    ``loaded``: a dense fine-tuned ``LoadedModel`` (left untouched: pruning runs on a copy), or,
    with ``masks``, an already pruned one (the pruning stage is skipped). ``config``: the
    pipeline settings (:class:`LpafConfig`). The Fisher factorizations estimate the pruned
    model's Fisher with ``config.statistics``.

    Returns the compressed ``LoadedModel`` (only ``LowRankLinear`` factors, ``lowrank_info``
    attached); ``lowrank_info.options`` records the pipeline settings, stage times and the
    validation metric.
    """
    c = config
    plan = resolve_ranks(loaded.model, c.ranks)
    if not plan:
        raise ValueError("the rank plan factorizes no layer (kept fraction 1.0?)")
    seconds, scores, result = {}, None, None
    if masks is None:
        sparsity = default_sparsity(loaded, plan) if c.sparsity is None else c.sparsity
        pruned = loaded.with_model(copy.deepcopy(loaded.model))
        result = prune(
            pruned,
            task,
            c.prune_method,
            sparsity,
            c.scope,
            c.prune_config,
            progress=scaled(progress, 0.0, 0.45),
            score_update=c.score_update,
        )
        masks, scores, seconds["prune"] = result.masks, result.scores, result.seconds
        bands = (0.45, 0.55, 0.97)
    else:
        pruned = loaded
        bands = (0.0, 0.15, 0.95)
    if c.score_weighting and scores is None:
        raise ValueError("score weighting needs the pruning scores: run the pruning stage (pass no masks)")
    start = time.perf_counter()
    importance = None
    if c.factorization in FISHER_FACTORIZATIONS:
        middle = (bands[0] + bands[1]) / 2
        stats = statistics_for(pruned, task, ("fisher",), c.statistics, progress=scaled(progress, bands[0], middle))
        importance = select(stats, "fisher")
        bands = (middle, *bands[1:])
    compressed = factorize_pruned(
        pruned,
        masks,
        plan,
        c.factorization,
        scores if c.score_weighting else None,
        importance,
        progress=scaled(progress, bands[0], bands[1]),
        **c.options,
    )
    seconds["factorize"] = time.perf_counter() - start
    start = time.perf_counter()
    stage = scaled(progress, bands[1], bands[2])
    if c.mixed_rank:
        mixed_rank_finetune(compressed, pruned, masks, task, c.finetune_config, c.p0, c.schedule, progress=stage)
    else:
        train(compressed.model, compressed.tokenizer, load_task(task), c.finetune_config, progress=stage)
    seconds["finetune"] = time.perf_counter() - start
    evaluation = evaluate(compressed, task, limit=c.eval_limit, latency=False, progress=scaled(progress, bands[2], 1.0))
    realized = 1.0 - sum(int(masks[n].sum()) for n in plan) / sum(masks[n].numel() for n in plan)
    info = compressed.model.lowrank_info
    info.options.update(
        {
            "pipeline": "lpaf",
            "sparsity": realized,
            "prune_method": c.prune_method if result else "given",
            "prune_scope": c.scope if result else "given",
            "score_update": c.score_update if result else "given",
            "factorization": c.factorization,
            "mixed_rank": c.mixed_rank,
            "p0": c.p0 if c.mixed_rank else 0.0,
            "anneal": c.schedule if c.mixed_rank else "none",
            "score_weighting": c.score_weighting,
            **{f"seconds_{k}": v for k, v in seconds.items()},
            f"validation_{evaluation.metric}": evaluation.value,
            "validation_loss": evaluation.loss,
            "validation_protocol": evaluation.protocol,
        }
    )
    return compressed
