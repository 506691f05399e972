"""Predicted against measured: how well a prediction ranks layers and runs by what compressing them did.

* :func:`single_layer_kl`: per layer, the measured change of the model's predictions when that layer alone is
  replaced by its plain rank-r SVD: ``mean_t KL(p_dense,t || p_l,t)`` (nats) over the predictions ``t`` of the
  validation examples (a classifier: one per example; a causal LM: one per predicted token). It is what the
  second-order estimate ``0.5 dW^T F dW`` (:func:`lowrank.statistics.taylor.svd_loss_change`, ``second_order``)
  predicts. The layer's weight is replaced in the forward call only (``torch.func.functional_call``): the model is
  never modified;
* :func:`run_agreement`: per stored plain-SVD run, the SVD-drop metric's whole-model predicted loss increase beside
  the measured one (:func:`lowrank.report.drop_checks`);
* :func:`rank_correlation`: Spearman's rho of the two.

Cost of :func:`single_layer_kl`: one truncated SVD per layer, one dense forward per batch and one per layer and batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from lowrank.data.batches import batches, num_batches
from lowrank.methods import truncated_svd
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, report
from lowrank.ranks import resolve_ranks

MIN_PAIRS = 3  # fewer finite pairs give no rank correlation


def rank_correlation(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Spearman's rho of the finite pairs (average ranks for ties); NaN with fewer than :data:`MIN_PAIRS` of them
    or when either side is constant."""
    frame = pd.DataFrame({"p": predicted, "m": measured}, dtype=float).replace([np.inf, -np.inf], np.nan).dropna()
    if len(frame) < MIN_PAIRS or frame["p"].nunique() < 2 or frame["m"].nunique() < 2:
        return math.nan
    return float(frame["p"].rank().corr(frame["m"].rank()))


def _log_probabilities(logits: torch.Tensor, batch: dict, lm: bool) -> torch.Tensor:
    """(predictions, classes) log-probabilities: a classifier's per example, a causal LM's per predicted token."""
    if not lm:
        return torch.log_softmax(logits.double(), -1)
    kept = batch["labels"][:, 1:] != -100  # token t predicts token t + 1
    return torch.log_softmax(logits[:, :-1][kept].double(), -1)


def _kl_sum(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference.exp() * (reference - other)).sum())


def single_layer_kl(
    loaded,
    task,
    ranks: dict[str, int] | float,
    split: str = "validation",
    batch_size: int = 16,
    max_length: int = 128,
    limit: int | None = 4,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per layer of ``ranks`` (``{layer: rank}`` or a kept fraction, as ``compress`` reads it): ``name``,
    ``rank``, ``measured_kl`` (nats, see the module) on the first ``limit`` batches of ``split`` (None: all)."""
    task = check_labels(loaded, task)
    model, tokenizer = loaded.model, loaded.tokenizer
    lm = task.kind == "lm"
    linears = compressible_linears(model)
    ranks = resolve_ranks(model, ranks)
    replaced = {}
    for name, rank in ranks.items():
        W = linears[name].weight.detach()
        U, V = truncated_svd(W.float(), rank)
        replaced[name] = (U @ V).to(W.dtype)
    total = num_batches(task, tokenizer, split, batch_size, max_length)
    total = min(total, limit) if limit else total
    sums, count = dict.fromkeys(ranks, 0.0), 0
    model.eval()
    with torch.inference_mode():
        for step, batch in enumerate(batches(task, tokenizer, split, batch_size, max_length, limit=limit)):
            batch = {k: v.to(loaded.device) for k, v in batch.items()}
            reference = _log_probabilities(model(**batch).logits, batch, lm)
            count += len(reference)
            for index, (name, weight) in enumerate(replaced.items()):
                report(progress, step * len(replaced) + index, total * len(replaced), f"{name} alone, batch {step + 1}")
                logits = functional_call(model, {f"{name}.weight": weight}, args=(), kwargs=batch).logits
                sums[name] += _kl_sum(reference, _log_probabilities(logits, batch, lm))
    report(progress, 1, 1, "single-layer KL done")
    if count == 0:
        raise ValueError(f"the {split} split of {task.name} has no examples to measure on")
    return pd.DataFrame(
        {"name": list(ranks), "rank": list(ranks.values()), "measured_kl": [sums[n] / count for n in ranks]}
    )


def run_agreement(checks) -> pd.DataFrame:
    """One row per :class:`lowrank.report.DropCheck` (a stored plain-SVD run): ``run``, ``budget``, ``predicted``
    (the metric's whole-model loss increase, nats) and ``measured`` (the run's loss increase against dense, nats)."""
    return pd.DataFrame(
        {
            "run": [c.run_id for c in checks],
            "budget": [c.budget for c in checks],
            "predicted": [c.predicted_loss_increase for c in checks],
            "measured": [c.measured_loss_increase for c in checks],
        }
    )
