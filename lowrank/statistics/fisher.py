"""The task loss a calibration pass back-propagates, and the Fisher information it defines.

For a weight ``W`` (out, in) and per-example loss ``l_n``::

    F_ij = (1 / N) sum_n (d l_n / d W_ij)^2

the diagonal of the empirical Fisher over ``N`` examples. ``l_n`` is the cross-entropy of example ``n``
(with its label, or with labels sampled from the model's prediction when ``labels="sampled"``: the true
Fisher, ``labels_per_example`` draws averaged), or the mean next-token loss of one token block (causal LM).
Per-example gradients ``dl_n/dW = g_n^T x_n`` come from hooks (:class:`.collectors.SquaredGradients`),
formed a batch at a time, squared and summed: memory O(parameters), cost about one backward pass.
Callers get it from :func:`lowrank.statistics.statistics_for` (kind ``fisher``).
"""

from __future__ import annotations

import torch
from torch import nn

from lowrank.statistics.settings import StatisticsSettings


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
