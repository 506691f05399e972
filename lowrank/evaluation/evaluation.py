"""``evaluate``: quality, size and latency of one model on a task split, all measured.

Quality (:mod:`lowrank.evaluation.quality`, :mod:`lowrank.evaluation.perplexity`): accuracy or perplexity (under
the protocol asked for, named in ``protocol``) and the mean loss; size
(:mod:`lowrank.evaluation.size`): parameters, compressible parameters and safetensors bytes; latency
(:mod:`lowrank.evaluation.latency`): median ms at batch 1 and 32 with how it was measured, unless
``latency=False``; throughput (:mod:`lowrank.evaluation.throughput`): prefill and decode tokens/s when
``throughput`` settings are given, against a dense ``reference`` measured in the same process. The result is one flat :class:`Evaluation` (``to_dict``: its flat fields).
Cost: one inference pass over the split, one write of the model, and the latency budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lowrank.data.tasks import load_task
from lowrank.evaluation.latency import latency_note, measure_latencies
from lowrank.evaluation.perplexity import (
    DEFAULT_PROTOCOL,
    check_protocol,
    default_window,
    perplexity_scores,
    protocol_text,
)
from lowrank.evaluation.quality import check_limit, check_task_fits, classification_protocol, classification_scores
from lowrank.evaluation.size import parameter_counts, safetensors_size
from lowrank.evaluation.throughput import (
    ThroughputSettings,
    compare_throughput,
    figures,
    measure_throughput,
    throughput_note,
)
from lowrank.models.labels import check_labels
from lowrank.progress import Progress


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
    # how the quality number was measured: "windows of 2048 tokens (...)" or "per-document (...)" for perplexity
    # (lowrank.evaluation.perplexity.protocol_text), "per example (...)" for accuracy
    protocol: str = ""
    # tokens/s, peak memory, FLOPs, ratios to dense and the FLOP bound (lowrank.evaluation.throughput); None if unmeasured
    throughput: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Flat fields (the latency conditions as one line, ``latency_note``; each throughput figure in tokens/s
        and, measured against dense, its ratio and fraction of the FLOP bound; ``throughput_note``)."""
        data = asdict(self)
        data["latency_note"] = latency_note(data.pop("latency"))
        throughput = data.pop("throughput") or {}
        for key in figures(throughput):
            data[f"{key}_tokens_s"] = throughput[key]
            if key in throughput.get("ratio", {}):
                data[f"{key}_vs_dense"] = throughput["ratio"][key]
                data[f"{key}_of_bound"] = throughput["of_bound"][key]
        if throughput:
            data["throughput_note"] = throughput_note(throughput)
        return data


def evaluate(
    loaded,
    task,
    split: str = "validation",
    batch_size: int | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    latency: bool = True,
    progress: Progress | None = None,
    throughput: ThroughputSettings | None = None,
    reference=None,
    protocol: str = DEFAULT_PROTOCOL,
) -> Evaluation:
    """Quality, size and latency of a ``LoadedModel`` on a task split (all measured, none estimated).

    A causal LM's perplexity is measured under ``protocol`` (``"windows"`` or ``"per-document"``,
    :mod:`lowrank.evaluation.perplexity`) with windows of ``max_length`` tokens (default: 2048 or the model's
    context); a classifier's texts are cut at ``max_length`` (default 128). ``latency=False`` skips the latency
    measurement (``latency_ms_b1``, ``latency_ms_b32`` and ``latency`` are None). ``throughput``: also measure
    tokens/s (:func:`lowrank.evaluation.throughput.measure_throughput`), against the dense ``reference`` (a
    ``LoadedModel``) when given (:func:`~lowrank.evaluation.throughput.compare_throughput`).
    """
    check_limit(limit)
    check_protocol(protocol)
    task = load_task(task)
    check_task_fits(loaded.name, loaded.kind, task.kind, task.name)
    task = check_labels(loaded, task)
    described = measurement_protocol(loaded, task.kind, protocol, max_length)
    if task.kind == "classification":
        length = max_length or 128
        value, loss, n = classification_scores(loaded, task, split, batch_size or 64, length, limit, progress)
        metric = "accuracy"
    else:
        window = max_length or default_window(loaded.model)
        value, loss, n = perplexity_scores(loaded, task, split, protocol, window, batch_size, limit, progress)
        metric = "perplexity"
    total, linear = parameter_counts(loaded.model)
    b1 = b32 = how = None
    if latency:
        b1, b32, how = measure_latencies(loaded, task, split, progress=progress)
    speed = None
    if throughput is not None:
        texts = list(task.split_texts(split)[:32])
        if reference is None:
            speed = measure_throughput(loaded, throughput, texts, progress)
        else:
            speed = compare_throughput(loaded, reference, throughput, texts, progress)
    return Evaluation(
        task.name,
        split,
        metric,
        value,
        loss,
        total,
        linear,
        safetensors_size(loaded.model),
        b1,
        b32,
        n,
        how,
        described,
        speed,
    )


def measurement_protocol(
    loaded, task_kind: str, protocol: str = DEFAULT_PROTOCOL, max_length: int | None = None
) -> str:
    """How :func:`evaluate` measures ``loaded`` on a task of ``task_kind``, in words (the ``protocol`` it records),
    known before measuring: runs are compared only when it is the same."""
    if task_kind == "classification":
        return classification_protocol(max_length or 128)
    return protocol_text(protocol, max_length or default_window(loaded.model))
