"""Second-order Taylor estimate of the loss change of a given weight change ``dW``, one layer at a time.

With the per-example directional derivative ``s_n = <dl_n/dW, dW> = sum_t g_nt^T dW x_nt`` and the *full*
(not diagonal) empirical Fisher as the Hessian::

    dL ~= mean_n s_n + 0.5 * mean_n s_n^2          (first-order term, Fisher quadratic form)

The diagonal approximation ``0.5 sum_ij F_ij dW_ij^2`` drops the cross terms of the square; the full form
keeps them (correlated inputs, tokens). Cost: one forward/backward calibration pass plus one extra
``(tokens, in) x (in, out)`` product per layer; not cached (it depends on ``dW``).
"""

from __future__ import annotations

import torch

from lowrank.methods.svd import truncated_svd
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress
from lowrank.ranks import resolve_ranks
from lowrank.statistics.collectors import DirectionalDerivatives
from lowrank.statistics.fisher import backward_task_losses
from lowrank.statistics.passes import calibration_pass
from lowrank.statistics.settings import DEFAULT, StatisticsSettings


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
