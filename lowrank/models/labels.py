"""The one check between a model and a task: does the task's data fit what the model predicts?

:func:`check_labels` ``(model, task) -> Task``: a classification task needs a classifier with as many labels;
when both sides have real label names (not ``LABEL_0``... / ``0``, ``1``...) the name sets must be equal
(case-insensitively) and the task's label ids are mapped onto the model's by name. A text (next-token) task
needs a causal LM. :func:`default_task`: the task a model was fine-tuned on (``lowrank_task`` in its
``config.json``, written by :func:`record_task`), else a packaged fine-tuned model's own task, ``lee`` for a
causal LM. :func:`task_key`: how a task is named again later (a CSV by its absolute path).
:func:`head_untrained`: does measuring the model on the task give it a freshly initialised classification head?
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from torch import nn

from lowrank.data.tasks import Task, TaskError, load_task
from lowrank.loaded import LoadedModel, unwrap
from lowrank.models.packaged import FINETUNED
from lowrank.validate import label_name

RECORD_KEY = "lowrank_task"  # config.json attribute written by record_task
DEFAULT_LM_TASK = "lee"
_GENERIC = re.compile(r"(label_?)?\d+", re.IGNORECASE)


def head_untrained(model_kind: str, task_kind: str) -> bool:
    """True when a checkpoint of ``model_kind`` (:func:`lowrank.models.model_kind` of its config) measured on a task of
    ``task_kind`` gets a freshly initialised classification head: an encoder on a classification task. Its accuracy is
    near chance until it is fine-tuned (``lowrank finetune``), so it says nothing about a compression method."""
    return model_kind == "encoder" and task_kind == "classification"


def module_kind(module: nn.Module) -> str:
    """``classifier``, ``causal-lm`` or ``encoder`` from a Hugging Face module's class."""
    name = type(module).__name__
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return "encoder"


def model_label_names(config) -> list[str]:
    """The classifier's label names in id order (``LABEL_i`` where the config names none)."""
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", None) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def has_real_names(names) -> bool:
    """False for placeholder names only (``LABEL_0``, ``0``, ``1``...)."""
    return bool(names) and not all(_GENERIC.fullmatch(str(n).strip()) for n in names)


def _show(names) -> str:
    names = list(names)
    return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def label_mapping(config, task: Task, model_name: str) -> list[int] | None:
    """The model's id for each of the task's label ids (``None``: the same ids); raises :class:`TaskError`."""
    model_names, task_names = model_label_names(config), list(task.label_names or [])
    if len(model_names) != len(task_names):
        raise TaskError(
            f"{model_name} classifies {len(model_names)} labels ({_show(model_names)}) but task "
            f"{task.name!r} has {len(task_names)} ({_show(task_names)})"
        )
    if not (has_real_names(model_names) and has_real_names(task_names)):
        return None
    key = lambda n: label_name(n).lower()  # noqa: E731
    index = {key(n): i for i, n in enumerate(model_names)}
    if len(index) != len(model_names) or set(index) != {key(n) for n in task_names}:
        raise TaskError(
            f"task {task.name!r} has labels {_show(task_names)} but {model_name} classifies "
            f"{_show(model_names)}; rename the task's labels to the model's (or fine-tune on the task)"
        )
    mapping = [index[key(n)] for n in task_names]
    return None if mapping == list(range(len(mapping))) else mapping


def _remap(task: Task, mapping: list[int]) -> Task:
    names = [""] * len(mapping)
    for task_id, model_id in enumerate(mapping):
        names[model_id] = task.label_names[task_id]
    labels = {split: [mapping[y] for y in ys] for split, ys in (task.labels or {}).items()}
    return replace(task, labels=labels, label_names=names, meta={**task.meta, "label_map": mapping})


def check_labels(model, task: str | Path | Task) -> Task:
    """``task`` (loaded by name or path when needed), checked against ``model`` (a ``LoadedModel`` or a
    Hugging Face module); a classification task comes back with label ids in the model's order."""
    task = load_task(task)
    module, loaded = unwrap(model)
    kind = loaded.kind if loaded is not None else module_kind(module)
    name = loaded.name if loaded is not None else type(module).__name__
    if task.kind == "classification":
        if kind != "classifier":
            raise TaskError(
                f"{name} is a {kind}, not a classifier: task {task.name!r} needs one (load it with the task "
                "to attach a head, then fine-tune)"
            )
        config = getattr(module, "config", None)
        mapping = label_mapping(config, task, name) if config is not None else None
        return task if mapping is None else _remap(task, mapping)
    if kind != "causal-lm":
        raise TaskError(
            f"{name} is a {kind}; task {task.name!r} (next-token text, perplexity) needs a causal language model"
        )
    return task


def task_key(task: Task) -> str:
    """The name that loads ``task`` again: a CSV's absolute path, else the task's name."""
    return str(task.meta.get("path") or task.name)


def record_task(module: nn.Module, task: Task) -> None:
    """Remember in the model's config (saved with it as ``config.json``) that it was trained on ``task``."""
    config = getattr(module, "config", None)
    if config is not None:
        setattr(config, RECORD_KEY, task_key(task))


def recorded_task(config) -> str | None:
    value = getattr(config, RECORD_KEY, None)
    return str(value) if value else None


def default_task(model: LoadedModel) -> str | None:
    """The task commands use when none is named: the recorded one, a packaged fine-tuned model's own task
    (``minilm-rt``: ``rotten_tomatoes``, also when its config records none), ``lee`` for a causal LM;
    ``None`` when nothing fits."""
    recorded = recorded_task(getattr(model.model, "config", None))
    if recorded:
        return recorded
    if model.name in FINETUNED:
        return FINETUNED[model.name]
    if model.kind == "causal-lm":
        return DEFAULT_LM_TASK
    return None
