"""Evaluation: task quality plus real size and latency measurements.

* classification: accuracy and mean cross-entropy on a split;
* causal LM: perplexity ``exp(mean next-token NLL)`` over token blocks of the split;
* classification fidelity to a reference model (no labels needed): the mean
  ``KL(p_ref || p) = mean_n sum_c p_ref(c|x_n) (log p_ref(c|x_n) - log p(c|x_n))``, the quantity whose
  Hessian at ``p = p_ref`` is the (true) Fisher information;
* total parameters, parameters in compressible / low-rank Linear layers;
* size of the safetensors file actually written (bytes);
* median forward latency (ms) at batch 1 and batch 32 on the model's device.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_model

from lowrank.data.batches import batches, encode, num_batches
from lowrank.data.tasks import Task
from lowrank.layers import LowRankLinear
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, report


@dataclass
class Evaluation:
    task: str
    split: str
    metric: str  # "accuracy" or "perplexity"
    value: float
    loss: float
    params_total: int
    params_linear: int
    size_bytes: int
    latency_ms_b1: Optional[float]
    latency_ms_b32: Optional[float]
    examples: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_limit(limit: Optional[int]) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of batches (or None for the whole split), got {limit!r}")


def _forward_batches(loaded, task: Task, split: str, batch_size: int, max_length: int, limit: Optional[int], progress):
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


def class_log_probabilities(loaded, task, split="validation", batch_size=64, max_length=128, limit=None,
                            progress=None) -> torch.Tensor:
    """``log p(c | x_n)`` of a classifier for every example of a split: (n, classes), float64 on the CPU, split order."""
    task = check_labels(loaded, task)
    return torch.cat([torch.log_softmax(out.logits.double(), -1).cpu()
                      for _, out in _forward_batches(loaded, task, split, batch_size, max_length, limit, progress)])


def prediction_kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``mean_n KL(p_ref,n || p_n)`` (nats) from two (n, classes) tensors of log-probabilities of the same examples.

    0 exactly when the two models predict the same distributions; to second order in a weight change
    ``dW`` of the reference model it equals ``0.5 dW^T F dW`` with ``F`` the true Fisher at those inputs."""
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(f"need two (examples, classes) log-probability tensors of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(other.shape)}")
    reference, other = reference.double(), other.double()
    return float((reference.exp() * (reference - other)).sum(-1).mean())


def accuracy(loaded, task, split="validation", **kwargs) -> float:
    return classification_scores(loaded, task, split, **kwargs)[0]


def lm_scores(loaded, task, split="validation", batch_size=8, block_size=256, limit=None, progress=None):
    """(perplexity, mean NLL per predicted token, n tokens) of a causal LM on a split."""
    task = check_labels(loaded, task)
    nll, tokens = 0.0, 0
    for batch, out in _forward_batches(loaded, task, split, batch_size, block_size, limit, progress):
        count = batch["labels"][:, 1:].numel()
        nll += out.loss.item() * count
        tokens += count
    mean = nll / tokens
    return math.exp(mean), mean, tokens


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters in compressible dense Linear + LowRankLinear weights)."""
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in compressible_linears(model).values())
    linear += sum(m.U.numel() + m.V.numel() for m in model.modules() if isinstance(m, LowRankLinear))
    return total, linear


def safetensors_size(model: torch.nn.Module) -> int:
    """Bytes of the model's safetensors file, measured by writing it to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size


def latency_ms(loaded, texts: list, batch_size: int, max_length: int = 128, repeats: int = 5) -> float:
    """Median wall time (ms) of one forward pass on ``batch_size`` real inputs, after one warm-up."""
    sample = (texts * (batch_size // max(1, len(texts)) + 1))[:batch_size]
    inputs = {k: v.to(loaded.device) for k, v in encode(loaded.tokenizer, sample, max_length).items()}
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if loaded.device.type == "cuda":
                torch.cuda.synchronize(loaded.device)
            start = time.perf_counter()
            loaded.model(**inputs)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize(loaded.device)
            if i:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def evaluate(loaded, task, split: str = "validation", batch_size: Optional[int] = None, max_length: Optional[int] = None,
             limit: Optional[int] = None, measure_latency: bool = True, progress: Optional[Progress] = None) -> Evaluation:
    """Quality, size and latency of a ``LoadedModel`` on a task split (all measured, none estimated)."""
    check_limit(limit)
    task = check_labels(loaded, task)
    if task.kind == "classification":
        value, loss, n = classification_scores(loaded, task, split, batch_size or 64, max_length or 128, limit, progress)
        metric = "accuracy"
    else:
        value, loss, n = lm_scores(loaded, task, split, batch_size or 8, max_length or 256, limit, progress)
        metric = "perplexity"
    total, linear = parameter_counts(loaded.model)
    b1 = b32 = None
    if measure_latency:
        texts = [t for t in task.split_texts(split)[:32]]
        report(progress, 0, 1, "measuring latency")
        b1 = latency_ms(loaded, texts, 1)
        b32 = latency_ms(loaded, texts, 32)
    return Evaluation(task.name, split, metric, value, loss, total, linear, safetensors_size(loaded.model), b1, b32, n)
