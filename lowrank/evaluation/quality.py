"""Quality: what a model scores on a task split, and when a compressed score means a destroyed model.

* classification: accuracy and mean cross-entropy over the split;
* causal LM: perplexity under a named protocol (:mod:`lowrank.evaluation.perplexity`);
* fidelity to a reference classifier (no labels needed): ``mean_n KL(p_ref,n || p_n)`` with
  ``KL = sum_c p_ref(c|x) (log p_ref(c|x) - log p(c|x))``, whose Hessian at ``p = p_ref`` is the true Fisher.

A causal LM is measured by perplexity on a text task, an encoder or classifier by accuracy
(:func:`check_task_fits`); a compressed result is destroyed (:func:`destroyed`) above 10x the dense
perplexity or at chance accuracy. Cost: one inference pass over the split (or ``limit`` batches).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from lowrank.data.batches import batches, num_batches
from lowrank.data.tasks import Task, load_task
from lowrank.models.labels import check_labels
from lowrank.progress import report

# The task kind each model kind is measured on: a causal LM by perplexity on text, the rest by accuracy.
TASK_KINDS = {"causal-lm": "lm", "classifier": "classification", "encoder": "classification"}
# A compressed model is flagged as destroyed when its perplexity exceeds this multiple of the dense model's,
# or when its accuracy falls to within CHANCE_MARGIN of always answering the most common label.
DESTROYED_PERPLEXITY_RATIO = 10.0
CHANCE_MARGIN = 0.02


def task_kind_for(model_kind: str) -> str:
    """``"lm"`` for a causal language model, ``"classification"`` for an encoder or a classifier."""
    return TASK_KINDS.get(model_kind, "classification")


def check_task_fits(name: str, model_kind: str, task_kind: str, task_name: str) -> None:
    """Raise ``ValueError`` (in words) when a model of ``model_kind`` cannot be measured on a ``task_kind`` task."""
    if task_kind == task_kind_for(model_kind):
        return
    if model_kind == "causal-lm":
        raise ValueError(
            f"{name} is a causal language model, not a classifier: measure it by perplexity on a text "
            f"task such as lee, not on the classification task {task_name}"
        )
    raise ValueError(
        f"{name} is a {model_kind}, not a causal language model: the text task {task_name} is measured "
        "by perplexity, which needs one; use a classification task"
    )


def chance_accuracy(task, split: str = "validation") -> float | None:
    """Accuracy of always answering the most common label of ``split`` (``None`` for a text task)."""
    task = load_task(task)
    labels = (task.labels or {}).get(split) if task.kind == "classification" else None
    if not labels:
        return None
    return max(Counter(int(label) for label in labels).values()) / len(labels)


def destroyed(metric: str, value, dense_value, chance: float | None = None) -> str | None:
    """Why a compressed result has destroyed the model, or ``None`` when it has not (or cannot be told).

    Perplexity: more than :data:`DESTROYED_PERPLEXITY_RATIO` times the dense model's (or not finite).
    Accuracy: within :data:`CHANCE_MARGIN` of ``chance`` (:func:`chance_accuracy`) while the dense
    model is clearly above it."""
    if dense_value is None or (isinstance(dense_value, float) and math.isnan(dense_value)):
        return None
    if metric == "perplexity":
        if value is None or not math.isfinite(value) or value > DESTROYED_PERPLEXITY_RATIO * dense_value:
            shown = "not finite" if value is None or not math.isfinite(value) else f"{value:.3g}"
            return (
                f"perplexity {shown} is more than {DESTROYED_PERPLEXITY_RATIO:g}x the dense model's "
                f"{dense_value:.3g}: this factorization destroys the model"
            )
        return None
    if metric == "accuracy" and chance is not None and value is not None:
        if dense_value > chance + CHANCE_MARGIN and value <= chance + CHANCE_MARGIN:
            return (
                f"accuracy {value:.3f} is at chance ({chance:.3f} for always answering the most common label; "
                f"dense {dense_value:.3f}): this factorization destroys the model"
            )
    return None


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of batches (or None for the whole split), got {limit!r}")


def _forward_batches(loaded, task: Task, split: str, batch_size: int, max_length: int, limit: int | None, progress):
    check_limit(limit)
    model, device = loaded.model, loaded.device
    total = num_batches(task, loaded.tokenizer, split, batch_size, max_length)
    total = min(total, limit) if limit else total
    model.eval()
    with torch.inference_mode():
        for i, batch in enumerate(batches(task, loaded.tokenizer, split, batch_size, max_length, limit=limit)):
            batch = {k: v.to(device) for k, v in batch.items()}
            yield batch, model(**batch)
            report(progress, i + 1, total, f"evaluating {split}")


def classification_scores(loaded, task, split="validation", batch_size=64, max_length=128, limit=None, progress=None):
    """(accuracy, mean cross-entropy, n examples) of a classifier on a split (labels checked by
    :func:`lowrank.models.labels.check_labels`)."""
    task = check_labels(loaded, task)
    correct, loss_sum, n = 0, 0.0, 0
    for batch, out in _forward_batches(loaded, task, split, batch_size, max_length, limit, progress):
        labels = batch["labels"]
        correct += (out.logits.argmax(-1) == labels).sum().item()
        loss_sum += torch.nn.functional.cross_entropy(out.logits.float(), labels, reduction="sum").item()
        n += len(labels)
    return correct / n, loss_sum / n, n


def class_log_probabilities(
    loaded, task, split="validation", batch_size=64, max_length=128, limit=None, progress=None
) -> torch.Tensor:
    """``log p(c | x_n)`` of a classifier for every example of a split: (n, classes), float64 on the CPU, split order."""
    task = check_labels(loaded, task)
    return torch.cat(
        [
            torch.log_softmax(out.logits.double(), -1).cpu()
            for _, out in _forward_batches(loaded, task, split, batch_size, max_length, limit, progress)
        ]
    )


def prediction_kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``mean_n KL(p_ref,n || p_n)`` (nats) from two (n, classes) tensors of log-probabilities of the same examples.

    0 exactly when the two models predict the same distributions; to second order in a weight change
    ``dW`` of the reference model it equals ``0.5 dW^T F dW`` with ``F`` the true Fisher at those inputs."""
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(
            f"need two (examples, classes) log-probability tensors of one shape, got "
            f"{tuple(reference.shape)} and {tuple(other.shape)}"
        )
    reference, other = reference.double(), other.double()
    return float((reference.exp() * (reference - other)).sum(-1).mean())


def accuracy(loaded, task, split="validation", **kwargs) -> float:
    return classification_scores(loaded, task, split, **kwargs)[0]


def classification_protocol(max_length: int) -> str:
    """The accuracy protocol of :func:`classification_scores`, in words."""
    return f"per example (texts cut at {max_length} tokens)"
