"""Evaluation: task quality plus real size and latency measurements.

* classification: accuracy and mean cross-entropy on a split;
* causal LM: perplexity ``exp(mean next-token NLL)`` over token blocks of the split;
* classification fidelity to a reference model (no labels needed): the mean
  ``KL(p_ref || p) = mean_n sum_c p_ref(c|x_n) (log p_ref(c|x_n) - log p(c|x_n))``, the quantity whose
  Hessian at ``p = p_ref`` is the (true) Fisher information;
* total parameters, parameters in compressible / low-rank Linear layers;
* size of the safetensors file actually written (bytes);
* median forward latency (ms) at batch 1 and batch 32 on the model's device, within a time budget
  (:data:`LATENCY_BUDGET_S` per batch size: a large model gets fewer timed passes, a pass longer than
  the budget is measured once), with the conditions it was measured under (threads, load average,
  a quick matmul calibration) so that measurements taken under different load can be told apart.

Which task kind a model kind is measured on (:func:`check_task_fits`) and when a compressed result
has destroyed the model (:func:`destroyed`) are decided here, once.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_model

from lowrank.data.batches import batches, encode, num_batches
from lowrank.data.tasks import Task, load_task
from lowrank.layers import LowRankLinear
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, report

# The task kind each model kind is measured on: a causal LM by perplexity on text, the rest by accuracy.
TASK_KINDS = {"causal-lm": "lm", "classifier": "classification", "encoder": "classification"}
# A compressed model is flagged as destroyed when its perplexity exceeds this multiple of the dense model's,
# or when its accuracy falls to within CHANCE_MARGIN of always answering the most common label.
DESTROYED_PERPLEXITY_RATIO = 10.0
CHANCE_MARGIN = 0.02
# Seconds per batch size that a latency measurement may take (warm-up included).
LATENCY_BUDGET_S = 5.0
# Two measurements' conditions disagree when the calibration differs by this factor or the load average
# by at least this many busy cores (or half the cores, whichever is more).
CALIBRATION_RATIO = 1.5
LOAD_STEP = 1.0


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
    latency_ms_b1: float | None
    latency_ms_b32: float | None
    examples: int
    # how the latencies were measured: {"conditions": ..., "budget_s": ..., "b1": {"repeats", "warm_up"}, "b32": ...}
    latency: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Flat fields (the latency conditions as one line, ``latency_note``)."""
        data = asdict(self)
        data["latency_note"] = latency_note(data.pop("latency"))
        return data


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


def lm_scores(loaded, task, split="validation", batch_size=8, block_size=256, limit=None, progress=None):
    """(perplexity, mean NLL per predicted token, n tokens) of a causal LM on a split."""
    task = check_labels(loaded, task)
    nll, tokens = 0.0, 0
    for batch, out in _forward_batches(loaded, task, split, batch_size, block_size, limit, progress):
        count = batch["labels"][:, 1:].numel()
        nll += out.loss.item() * count
        tokens += count
    mean = nll / tokens
    return (math.exp(mean) if mean < 700 else math.inf), mean, tokens


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


def calibration_ms(device=None, size: int = 512, repeats: int = 7) -> float:
    """Median time (ms) of one fixed ``size x size`` float32 matmul: how fast this machine is right now."""
    device = torch.device(device or "cpu")
    a = torch.ones(size, size, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measurement_conditions(device=None) -> dict:
    """What a latency depends on besides the model: device, torch threads, CPU count, the 1-minute load
    average and :func:`calibration_ms` right now."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": str(torch.device(device or "cpu")),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load": None if load is None else round(load, 2),
        "calibration_ms": round(calibration_ms(device), 3),
        "time": time.time(),
    }


def conditions_differ(recorded: dict | None, now: dict | None) -> str | None:
    """Every reason why latencies measured under ``recorded`` and ``now`` (:func:`measurement_conditions`)
    are not comparable (joined by "; "), or ``None`` when they are. Missing conditions (an older
    measurement) differ."""
    if not recorded or not now:
        return "no recorded measurement conditions"
    reasons = [
        f"{key} {recorded.get(key)} then, {now.get(key)} now"
        for key in ("device", "threads")
        if recorded.get(key) != now.get(key)
    ]
    then_ms, now_ms = recorded.get("calibration_ms"), now.get("calibration_ms")
    if then_ms and now_ms and max(then_ms, now_ms) / min(then_ms, now_ms) > CALIBRATION_RATIO:
        reasons.append(f"calibration matmul {then_ms:.1f} ms then, {now_ms:.1f} ms now")
    then_load, now_load = recorded.get("load"), now.get("load")
    if then_load is not None and now_load is not None:
        if abs(then_load - now_load) >= max(LOAD_STEP, 0.5 * (now.get("cpus") or 1)):
            reasons.append(f"load average {then_load:.1f} then, {now_load:.1f} now")
    return "; ".join(reasons) or None


@dataclass
class Latency:
    """One latency measurement: ``ms`` (median of ``repeats`` timed passes), whether a warm-up pass ran first."""

    ms: float
    repeats: int
    warm_up: bool


def measure_latency(
    loaded,
    texts: list,
    batch_size: int,
    max_length: int = 128,
    repeats: int = 5,
    budget_s: float | None = LATENCY_BUDGET_S,
) -> Latency:
    """Median wall time of forward passes on ``batch_size`` real inputs, within about ``budget_s`` seconds.

    The first pass is a warm-up; as many of ``repeats`` timed passes follow as the budget leaves room for
    (at the warm-up's speed). A pass that alone uses half the budget or more is the measurement itself
    (``repeats=1, warm_up=False``): a large model is measured once rather than six times."""
    sample = (texts * (batch_size // max(1, len(texts)) + 1))[:batch_size]
    inputs = {k: v.to(loaded.device) for k, v in encode(loaded.tokenizer, sample, max_length).items()}
    cuda = loaded.device.type == "cuda"

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize(loaded.device)
        start = time.perf_counter()
        loaded.model(**inputs)
        if cuda:
            torch.cuda.synchronize(loaded.device)
        return time.perf_counter() - start

    with torch.inference_mode():
        first = timed()
        if budget_s is not None and first >= budget_s / 2:
            return Latency(first * 1000, 1, False)
        count = repeats if budget_s is None else max(1, min(repeats, int((budget_s - first) / max(first, 1e-9))))
        times = [timed() for _ in range(count)]
    return Latency(statistics.median(times) * 1000, len(times), True)


def latency_ms(
    loaded,
    texts: list,
    batch_size: int,
    max_length: int = 128,
    repeats: int = 5,
    budget_s: float | None = LATENCY_BUDGET_S,
) -> float:
    """:func:`measure_latency` in milliseconds."""
    return measure_latency(loaded, texts, batch_size, max_length, repeats, budget_s).ms


def measure_latencies(
    loaded, task, split: str = "validation", budget_s: float | None = LATENCY_BUDGET_S, progress: Progress | None = None
) -> tuple[float, float, dict]:
    """``(ms at batch 1, ms at batch 32, how)`` on the first 32 texts of ``split``; ``how`` holds the
    :func:`measurement_conditions` and each measurement's repeats (stored with the run)."""
    task = load_task(task)
    texts = list(task.split_texts(split)[:32])
    report(progress, 0, 2, "measuring latency")
    conditions = measurement_conditions(loaded.device)
    b1 = measure_latency(loaded, texts, 1, budget_s=budget_s)
    report(progress, 1, 2, "measuring latency (batch 32)")
    b32 = measure_latency(loaded, texts, 32, budget_s=budget_s)
    report(progress, 2, 2, "latency measured")
    how = {
        "conditions": conditions,
        "budget_s": budget_s,
        "b1": {"repeats": b1.repeats, "warm_up": b1.warm_up},
        "b32": {"repeats": b32.repeats, "warm_up": b32.warm_up},
    }
    return b1.ms, b32.ms, how


def latency_note(how: dict | None, batch: str | None = None) -> str:
    """One line on how latencies were measured, e.g. ``"median of 5 passes after a warm-up; 2 threads, load 1.9"``
    (``batch``: ``"b1"`` or ``"b32"`` for one of them)."""
    if not how:
        return ""

    def passes(entry: dict) -> str:
        if not entry.get("warm_up"):
            budget = how.get("budget_s")
            return f"a single pass (longer than half the {budget:g} s budget)" if budget else "a single pass"
        if entry["repeats"] == 1:
            return "one pass after a warm-up"
        return f"median of {entry['repeats']} passes after a warm-up"

    parts = [f"batch {key[1:]}: {passes(how[key])}" for key in ("b1", "b32") if key in how and (batch in (None, key))]
    if batch is not None:
        parts = [part.split(": ", 1)[1] for part in parts]
    conditions = how.get("conditions") or {}
    where = ", ".join(
        x
        for x in (
            f"{conditions['threads']} thread{'s' if conditions['threads'] != 1 else ''}"
            if conditions.get("threads")
            else "",
            f"load average {conditions['load']:.1f}" if conditions.get("load") is not None else "",
            f"calibration {conditions['calibration_ms']:.1f} ms" if conditions.get("calibration_ms") else "",
        )
        if x
    )
    return (
        "; ".join(parts)
        + (f" ({where})" if where else "")
        + (f"; re-measured: {how['remeasured']}" if how.get("remeasured") else "")
    )


def evaluate(
    loaded,
    task,
    split: str = "validation",
    batch_size: int | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    measure_latency: bool = True,
    progress: Progress | None = None,
) -> Evaluation:
    """Quality, size and latency of a ``LoadedModel`` on a task split (all measured, none estimated)."""
    check_limit(limit)
    task = load_task(task)
    check_task_fits(loaded.name, loaded.kind, task.kind, task.name)
    task = check_labels(loaded, task)
    if task.kind == "classification":
        value, loss, n = classification_scores(
            loaded, task, split, batch_size or 64, max_length or 128, limit, progress
        )
        metric = "accuracy"
    else:
        value, loss, n = lm_scores(loaded, task, split, batch_size or 8, max_length or 256, limit, progress)
        metric = "perplexity"
    total, linear = parameter_counts(loaded.model)
    b1 = b32 = how = None
    if measure_latency:
        b1, b32, how = measure_latencies(loaded, task, split, progress=progress)
    return Evaluation(
        task.name, split, metric, value, loss, total, linear, safetensors_size(loaded.model), b1, b32, n, how
    )
