"""LPAF (Ren & Zhu 2023): low-rank prune-and-factorize, and the rank analysis behind it.

The paper's observation: fine-tuned weights are close to full rank, so factorizing them
directly fails at moderate-to-high compression, while first-order (movement) pruning
yields sparse weights whose spectra are concentrated: sparse *and* low rank.
:func:`rank_analysis` measures this for any model. (On MiniLM / Rotten Tomatoes with
2-8 epochs of pruning movement pruning collapsed; Taylor pruning does not, but LPAF
stayed behind FWSVD + fine-tuning; see README, "LPAF".)

Pipeline (:func:`lpaf`), each stage optional where the paper ablates it:

1. **prune**: first-order pruning during fine-tuning to sparsity ``s`` (:mod:`lowrank.prune`):
   ``prune_method="movement"`` (accumulated ``-W * grad``) or ``"taylor"`` (accumulated
   ``|W * grad|``, the first-order estimate of the loss increase from removing a weight);
   ``"magnitude"`` swaps in the zeroth-order baseline;
2. **factorization** of each pruned weight ``W ⊙ M`` at rank ``r`` (``factorization=``):

   * ``"sparsity_aware"`` (default, the paper's stage)::

         min_{U,V}  sum_ij M_ij S_ij (W - U V)_ij^2

     zero weight on pruned entries, ``S = 1`` by default or a score weighting (see
     :func:`sparsity_importance`);
   * ``"svd"``: plain truncated SVD of ``W ⊙ M`` (every entry a target, zeros included);
   * ``"fwsvd"`` / ``"tfwsvd"``: the Fisher-weighted methods of :mod:`lowrank.weighted` on
     ``W ⊙ M`` with the empirical Fisher ``F`` of the *pruned* model::

         min_{U,V}  sum_ij F_ij ((W ⊙ M) - U V)_ij^2

     The pruned zeros stay targets, weighted by how much the loss cares about them
     (``F_ij`` at a zeroed weight is its squared gradient there). This variant is ours, not
     the paper's: on MiniLM / Rotten Tomatoes, fitting only the kept entries loses the
     function of the pruned model (see README, "LPAF");
3. **mixed-rank fine-tuning** (:mod:`lowrank.mixed`): each layer runs its sparse weight with
   probability ``p(t)`` annealed from ``p0`` to 0, else its factors; at the end only the
   factors remain (or plain fine-tuning of the factorized model, ``mixed_rank=False``);
4. **evaluate** on the validation split.

Choice of the pruning sparsity (a reconstruction; the paper's setting is not available
here): by default ``s = 1 - f`` for a kept parameter fraction ``f`` (:func:`default_sparsity`),
i.e. the sparse model has as many non-zeros as the factorized model has parameters, so
both stages compress to the same budget.
"""

from __future__ import annotations

import copy
import time
from typing import Optional

import pandas as pd
import torch

from .architectures import compressible_linears, layer_type
from .compress import Ranks, compress, low_rank_layers, resolve_ranks
from .data import load_task
from .finetune import TrainConfig, train
from .progress import Progress, report, scaled
from .spectra import rank_statistics, singular_values

RANK_COLUMNS = ("numerical_rank", "effective_rank", "stable_rank", "rank90", "rank95", "rank99")
FINETUNE_CONFIG = TrainConfig(epochs=2.0, lr=8e-5, batch_size=32, max_length=64)
FACTORIZATIONS = ("sparsity_aware", "svd", "fwsvd", "tfwsvd")
FISHER_FACTORIZATIONS = ("fwsvd", "tfwsvd")


# ----------------------------------------------------------------------------- rank analysis


def rank_analysis(model, tol: float = 1e-3, progress: Optional[Progress] = None) -> pd.DataFrame:
    """One row per compressible matrix: name, type, out, in, sparsity (fraction of exact zeros),
    the rank statistics of :func:`lowrank.spectra.rank_statistics` at relative tolerance ``tol``
    (numerical rank ``#{s_i > tol s_1}``, effective, stable, 90/95/99% energy ranks) and each
    rank divided by ``min(out, in)`` (``rel_*`` columns). Cost: one SVD per matrix.
    """
    model = getattr(model, "model", model)
    linears = compressible_linears(model)
    rows = []
    for i, (name, module) in enumerate(linears.items()):
        report(progress, i, len(linears), f"ranks of {name}")
        weight = module.weight.detach()
        full = min(weight.shape)
        stats = rank_statistics(singular_values(weight), tol)
        rows.append({"name": name, "type": layer_type(model, name), "out": weight.shape[0], "in": weight.shape[1],
                     "sparsity": float((weight == 0).float().mean()), **stats,
                     **{f"rel_{k}": stats[k] / full for k in RANK_COLUMNS}})
    report(progress, len(linears), len(linears), "ranks done")
    return pd.DataFrame(rows)


def average_ranks(frame: pd.DataFrame) -> dict:
    """Means over matrices of every rank column (absolute and relative); ``sparsity`` is the overall
    fraction of zeros (weighted by matrix size)."""
    columns = [*RANK_COLUMNS, *(f"rel_{k}" for k in RANK_COLUMNS)]
    size = frame["out"] * frame["in"]
    return {"sparsity": float((frame["sparsity"] * size).sum() / size.sum()), **{c: float(frame[c].mean()) for c in columns}}


# ----------------------------------------------------------------------------- pipeline stages


def kept_fraction(model, plan: dict[str, int]) -> float:
    """Parameters of the factorized layers after factorization over their dense parameters."""
    model = getattr(model, "model", model)
    linears = compressible_linears(model)
    dense = sum(linears[n].weight.numel() for n in plan)
    kept = sum(r * sum(linears[n].weight.shape) for n, r in plan.items())
    return kept / dense if dense else 1.0


def default_sparsity(model, ranks: Ranks) -> float:
    """``1 - f`` with ``f`` the parameter fraction the factorization keeps (see module docstring)."""
    plan = resolve_ranks(getattr(model, "model", model), ranks)
    if not plan:
        raise ValueError("the rank plan factorizes no layer (kept fraction 1.0?); nothing to prune and factorize")
    return 1.0 - kept_fraction(model, plan)


def sparsity_importance(masks: dict[str, torch.Tensor], scores: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
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


def factorize_pruned(pruned, masks: dict[str, torch.Tensor], ranks: Ranks, factorization: str = "sparsity_aware",
                     scores: Optional[dict[str, torch.Tensor]] = None, importance: Optional[dict[str, torch.Tensor]] = None,
                     progress: Optional[Progress] = None, **options):
    """Factorize a pruned model (returns a new ``LoadedModel``; ``pruned`` is untouched).

    ``factorization`` (see the module docstring): ``"sparsity_aware"`` with importance from
    :func:`sparsity_importance` (``scores`` optional); ``"svd"``; ``"fwsvd"`` / ``"tfwsvd"`` with
    ``importance`` = the Fisher of the pruned model (:func:`lowrank.fisher.estimate_fisher`).
    ``options`` go to the method.
    """
    _check_factorization(factorization, scores is not None)
    if factorization == "svd":
        return compress(pruned, ranks, method="svd", progress=progress)
    if factorization in FISHER_FACTORIZATIONS:
        from . import weighted  # noqa: F401  (registers fwsvd / tfwsvd)

        if importance is None:
            raise ValueError(f"factorization {factorization!r} needs importance: the Fisher of the pruned model")
        return compress(pruned, ranks, method=factorization, importance=importance, progress=progress, **options)
    from . import sparsity  # noqa: F401  (registers the ``sparsity_aware`` method)

    plan = resolve_ranks(pruned.model, ranks)
    missing = [n for n in plan if n not in masks]
    if missing:
        raise ValueError(f"no pruning mask for layers {missing[:3]}; prune every layer that is factorized")
    importance = sparsity_importance({n: masks[n] for n in plan}, None if scores is None else {n: scores[n] for n in plan})
    return compress(pruned, plan, method="sparsity_aware", importance=importance, progress=progress, **options)


def mixed_rank_finetune(compressed, pruned, masks: dict[str, torch.Tensor], task, config: TrainConfig,
                        p0: float = 0.5, schedule: str = "linear", until: float = 1.0,
                        progress: Optional[Progress] = None) -> tuple[list[float], list[float]]:
    """Mixed-rank fine-tuning of ``compressed`` in place, then :func:`lowrank.mixed.finalize`.

    ``pruned``: the pruned model whose sparse weights give the sparse paths.
    Returns (losses, probability after each step).
    """
    from .mixed import MixedRankAnnealing, finalize, to_mixed_rank

    dense = compressible_linears(pruned.model)
    layers = low_rank_layers(compressed.model)
    to_mixed_rank(compressed.model, {n: dense[n].weight.detach() for n in layers}, masks)
    hook = MixedRankAnnealing(p0, schedule, until)
    try:
        losses = train(compressed.model, compressed.tokenizer, load_task(task), config, hooks=[hook], progress=progress)
    finally:
        finalize(compressed.model)
    return losses, hook.history


def lpaf(loaded, task, sparsity: Optional[float] = None, ranks: Ranks = 0.5, prune_config: Optional[TrainConfig] = None,
         finetune_config: Optional[TrainConfig] = None, factorization: str = "sparsity_aware", mixed_rank: bool = True,
         p0: float = 0.5, schedule: str = "linear", prune_method: str = "movement", scope: str = "global",
         score_update: str = "raw",
         score_weighting: bool = False, fisher_batches: int = 32,
         masks: Optional[dict[str, torch.Tensor]] = None, eval_limit: Optional[int] = None,
         progress: Optional[Progress] = None, **options):
    """Prune -> (sparsity-aware) factorization -> mixed-rank fine-tuning -> evaluation.

    ``loaded``: a dense fine-tuned ``LoadedModel`` (left untouched: pruning runs on a copy), or,
    with ``masks``, an already pruned one (the pruning stage is skipped). ``sparsity``: pruning
    target (default :func:`default_sparsity`); ``prune_method`` (``movement``, ``taylor`` or
    ``magnitude``), ``scope`` and ``score_update`` as in :func:`lowrank.prune.prune`.
    ``ranks``: as in :func:`lowrank.compress`. ``factorization``: see :func:`factorize_pruned`;
    the Fisher methods estimate the pruned model's Fisher on ``fisher_batches`` x 16 examples.
    ``prune_config`` defaults to :data:`lowrank.prune.PRUNE_CONFIG`, ``finetune_config`` to
    :data:`FINETUNE_CONFIG`. ``options`` go to the factorization method.

    Returns the compressed ``LoadedModel`` (only ``LowRankLinear`` factors, ``lowrank_info``
    attached); ``lowrank_info.options`` records the pipeline settings, stage times and the
    validation metric.
    """
    from .evaluate import evaluate
    from .prune import PRUNE_CONFIG, prune

    plan = resolve_ranks(loaded.model, ranks)
    if not plan:
        raise ValueError("the rank plan factorizes no layer (kept fraction 1.0?)")
    _check_factorization(factorization, score_weighting)
    finetune_config = finetune_config or FINETUNE_CONFIG
    seconds, scores, result = {}, None, None
    if masks is None:
        sparsity = default_sparsity(loaded, plan) if sparsity is None else sparsity
        pruned = type(loaded)(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.kind, loaded.name, loaded.path)
        result = prune(pruned, task, prune_method, sparsity, scope, prune_config or PRUNE_CONFIG,
                       progress=scaled(progress, 0.0, 0.45), score_update=score_update)
        masks, scores, seconds["prune"] = result.masks, result.scores, result.seconds
        bands = (0.45, 0.55, 0.97)
    else:
        pruned = loaded
        bands = (0.0, 0.15, 0.95)
    if score_weighting and scores is None:
        raise ValueError("score weighting needs the pruning scores: run the pruning stage (pass no masks)")
    start = time.perf_counter()
    importance = None
    if factorization in FISHER_FACTORIZATIONS:
        from .fisher import estimate_fisher

        middle = (bands[0] + bands[1]) / 2
        importance = estimate_fisher(pruned, task, num_batches=fisher_batches, batch_size=16,
                                     progress=scaled(progress, bands[0], middle))
        bands = (middle, *bands[1:])
    compressed = factorize_pruned(pruned, masks, plan, factorization, scores if score_weighting else None, importance,
                                  progress=scaled(progress, bands[0], bands[1]), **options)
    seconds["factorize"] = time.perf_counter() - start
    start = time.perf_counter()
    stage = scaled(progress, bands[1], bands[2])
    if mixed_rank:
        mixed_rank_finetune(compressed, pruned, masks, task, finetune_config, p0, schedule, progress=stage)
    else:
        train(compressed.model, compressed.tokenizer, load_task(task), finetune_config, progress=stage)
    seconds["finetune"] = time.perf_counter() - start
    evaluation = evaluate(compressed, task, limit=eval_limit, measure_latency=False, progress=scaled(progress, bands[2], 1.0))
    realized = 1.0 - sum(int(masks[n].sum()) for n in plan) / sum(masks[n].numel() for n in plan)
    info = compressed.model.lowrank_info
    info.options.update({
        "pipeline": "lpaf", "sparsity": realized, "prune_method": prune_method if result else "given",
        "prune_scope": scope if result else "given",
        "score_update": score_update if result else "given",
        "factorization": factorization, "mixed_rank": mixed_rank, "p0": p0 if mixed_rank else 0.0,
        "anneal": schedule if mixed_rank else "none", "score_weighting": score_weighting,
        **{f"seconds_{k}": v for k, v in seconds.items()},
        f"validation_{evaluation.metric}": evaluation.value, "validation_loss": evaluation.loss,
    })
    return compressed

