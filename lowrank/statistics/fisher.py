"""Empirical Fisher information of every compressible Linear weight.

For a weight ``W`` (out, in) and per-example loss ``l_n``::

    F_ij = (1 / N) sum_n (d l_n / d W_ij)^2

the average over ``N`` training examples of the squared per-example gradient (the
diagonal of the empirical Fisher). ``l_n`` is the cross-entropy of example ``n``
(classification, with its label, or with a label sampled from the model's own
prediction when ``labels="sampled"``: the true Fisher, optionally with ``labels_per_example``
draws per example, averaged), or the mean next-token loss of one token block (causal LM).

Per-example gradients come from hooks (:mod:`lowrank.statistics.collectors`), without
per-batch copies of the gradient: ``dl_n/dW = g_n^T x_n`` is formed one example at a time,
squared and added to a running sum. Memory is O(parameters) plus one
(out, in) scratch matrix; cost is about one extra backward pass.

Results are cached on disk (safetensors) under ``<cache>/fisher/`` (:mod:`lowrank.statistics.cache`).
Sampling: a :class:`~lowrank.statistics.settings.StatisticsSettings`.

:func:`loss_change_taylor` uses the same per-example pass for a given change ``dW`` of each
layer (e.g. a truncation residual): with the per-example directional derivative
``s_n = <dl_n/dW, dW> = sum_t g_nt^T dW x_nt``, the second-order estimate of the loss change
with the *full* (not diagonal) empirical Fisher as the Hessian is::

    dL ~= mean_n s_n + 0.5 * mean_n s_n^2          (first-order term, Fisher quadratic form)

The diagonal approximation ``0.5 sum_ij F_ij dW_ij^2 = 0.5 mean_n sum_ij (G_n,ij dW_ij)^2``
drops the cross terms of the square; the full form keeps them (correlated inputs, tokens).
Cost: one forward/backward pass plus one extra ``(tokens, in) x (in, out)`` product per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from lowrank.methods.svd import truncated_svd
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress
from lowrank.ranks import resolve_ranks
from lowrank.statistics import cache
from lowrank.statistics.collectors import DirectionalDerivatives, SquaredGradients
from lowrank.statistics.passes import calibration_pass, is_main
from lowrank.statistics.settings import DEFAULT, StatisticsSettings


def task_losses(
    loaded, batch: dict, labels: str, generator: torch.Generator, per_example: int = 1
) -> list[torch.Tensor]:
    """The batch's mean loss, from one forward pass: cross-entropy with the data labels, or with labels
    sampled from the model (``labels="sampled"``, classifiers: ``per_example`` draws per example, with
    replacement, one loss per draw), or the next-token loss (causal LM). A list of one loss otherwise."""
    if labels == "sampled" and loaded.kind == "classifier":
        out = loaded.model(**{k: v for k, v in batch.items() if k != "labels"})
        probs = out.logits.detach().float().softmax(-1)
        sampled = torch.multinomial(probs.cpu(), per_example, replacement=per_example > 1, generator=generator).to(
            probs.device
        )
        return [nn.functional.cross_entropy(out.logits, sampled[:, s]) for s in range(per_example)]
    return [loaded.model(**batch).loss]


def backward_task_losses(loaded, batch: dict, settings: StatisticsSettings, generator: torch.Generator) -> int:
    """Backward passes of :func:`task_losses` for ``settings`` (one forward; the graph is kept between the
    ``labels_per_example`` backward passes); returns how many there were, so hooks' sums divide by it."""
    losses = task_losses(loaded, batch, settings.labels, generator, settings.labels_per_example)
    for index, loss in enumerate(losses):
        loss.backward(retain_graph=index < len(losses) - 1)
    return len(losses)


def estimate_fisher(
    loaded, task, settings: StatisticsSettings = DEFAULT, use_cache: bool = True, progress: Progress | None = None
) -> dict[str, torch.Tensor]:
    """``{module_name: F}`` with ``F`` (out, in) the Fisher of each compressible Linear weight.

    Sampling from ``settings`` (see :class:`StatisticsSettings`). Tensors are float32 on
    the CPU. Callers outside :mod:`lowrank.statistics` use :func:`lowrank.statistics.statistics_for`.
    """
    task = check_labels(loaded, task)
    path = cache.entry_path("fisher", loaded, task, settings.to_dict())
    if use_cache and (cached := cache.read(path)) is not None:
        return cached
    linears = compressible_linears(loaded.model)
    if not linears:
        raise ValueError(f"{loaded.name} has no compressible Linear layers")
    collectors = {name: SquaredGradients(module) for name, module in linears.items()}
    examples = calibration_pass(
        loaded, task, collectors, settings, backward_task_losses, True, progress, "estimating Fisher information"
    )
    fisher = {name: c.result(examples) for name, c in collectors.items()}
    if use_cache and is_main():
        cache.write(path, fisher, settings.to_dict())
    return fisher


def loss_change_taylor(
    loaded,
    task,
    deltas: dict[str, torch.Tensor],
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Second-order estimate of the loss change from ``W <- W + dW``, for each layer of ``deltas`` *alone*.

    ``deltas``: ``{module_name: dW}`` with ``dW`` shaped like the weight (for a rank-r
    approximation ``W_hat``, ``dW = W_hat - W``). Returns per layer ``first_order``
    (``mean_n s_n``), ``second_order`` (``0.5 mean_n s_n^2``, the full empirical-Fisher
    quadratic form; with ``labels="sampled"`` the true-Fisher form, the mean over every drawn
    label) and ``total`` (their sum); see the module docstring. Not cached: it depends on ``dW``.
    """
    task = check_labels(loaded, task)
    linears = compressible_linears(loaded.model)
    unknown = sorted(set(deltas) - set(linears))
    if unknown:
        raise ValueError(f"not compressible Linear layers of {loaded.name}: {unknown[:3]}")
    for name, delta in deltas.items():
        if tuple(delta.shape) != tuple(linears[name].weight.shape):
            raise ValueError(f"{name}: change shape {tuple(delta.shape)} != weight {tuple(linears[name].weight.shape)}")
    collectors = {name: DirectionalDerivatives(linears[name], delta) for name, delta in deltas.items()}
    examples = calibration_pass(
        loaded, task, collectors, settings, backward_task_losses, True, progress, "Taylor estimate of the loss change"
    )
    estimates = {}
    for name, c in collectors.items():
        first, second = float(c.sums[0]) / examples, 0.5 * float(c.sums[1]) / examples
        estimates[name] = {"first_order": first, "second_order": second, "total": first + second}
    return estimates


def svd_loss_change(
    loaded, task, ranks, settings: StatisticsSettings = DEFAULT, progress: Progress | None = None
) -> dict[str, dict[str, float]]:
    """:func:`loss_change_taylor` of each layer's plain truncated-SVD residual ``dW = SVD_r(W) - W``.

    ``ranks``: ``{layer: rank}`` or a kept fraction, validated as in :func:`lowrank.compress`.
    With ``settings.split="train"`` it needs no held-out data; computed on a labelled held-out
    split (disjoint from the data it is judged on) its first-order term also sees the
    generalization gap. Cost: one truncated SVD per layer plus one per-example pass.
    """
    linears = compressible_linears(loaded.model)
    deltas = {}
    for name, rank in resolve_ranks(loaded.model, ranks).items():
        W = linears[name].weight.detach().float()
        U, V = truncated_svd(W, rank)
        deltas[name] = U @ V - W
    return loss_change_taylor(loaded, task, deltas, settings, progress)
