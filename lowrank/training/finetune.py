"""Fine-tuning loop with hooks: AdamW, linear warm-up then linear decay, on the task's training split.

Hooks see the model at three points of every step, which is how pruning accumulates scores and re-applies masks,
and how mixed-rank training anneals its probability::

    hook.on_start(model, total_steps)
    loss.backward(); hook.after_backward(model, step)
    optimizer.step(); hook.after_step(model, step)

A :class:`Recipe` (base model, task, settings, output folder) is what :func:`build` fine-tunes and saves;
:func:`recipe_for` gives the recipe of a packaged model or of any model whose head is untrained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lowrank.data.batches import batches, num_batches
from lowrank.data.tasks import Task, load_task
from lowrank.evaluation.quality import accuracy
from lowrank.files.atomic import atomic_dir
from lowrank.files.cache import cache_dir
from lowrank.models.labels import check_labels, record_task
from lowrank.models.loading import load_model
from lowrank.models.packaged import (
    FINETUNED,
    FINETUNED_BASE,
    build_command,
    finetuned_dir,
    finetuned_model,
    has_weights,
)
from lowrank.progress import Progress, report


@dataclass
class TrainConfig:
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.06
    seed: int = 0
    max_steps: int | None = None


class TrainingHook:
    """Base class: override any of the three callbacks."""

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        pass

    def after_backward(self, model: nn.Module, step: int) -> None:
        pass

    def after_step(self, model: nn.Module, step: int) -> None:
        pass


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over ``warmup`` steps, then linear 1 -> 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def train(
    model: nn.Module,
    tokenizer,
    task: Task,
    config: TrainConfig | None = None,
    hooks: Sequence[TrainingHook] = (),
    progress: Progress | None = None,
) -> list[float]:
    """Train ``model`` in place on ``task``'s training split; returns the loss per step.

    The task's labels are checked against the model's (:func:`lowrank.models.labels.check_labels`) and the
    task is recorded in the model's config (``lowrank_task``, saved with it): commands default to it later.
    ``config``: :class:`TrainConfig` (its defaults when ``None``)."""
    config = config or TrainConfig()
    task = check_labels(model, task)
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    per_epoch = num_batches(task, tokenizer, "train", config.batch_size, config.max_length)
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warmup = int(config.warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, total, warmup))
    for hook in hooks:
        hook.on_start(model, total)
    model.train()
    losses: list[float] = []
    report(progress, 0, total, "fine-tuning")
    epoch = 0
    while len(losses) < total:
        for batch in batches(
            task, tokenizer, "train", config.batch_size, config.max_length, shuffle=True, seed=config.seed + epoch
        ):
            step = len(losses)
            if step >= total:
                break
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for hook in hooks:
                hook.after_backward(model, step)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            for hook in hooks:
                hook.after_step(model, step)
            losses.append(loss.item())
            report(progress, step + 1, total, f"fine-tuning, loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        epoch += 1
    model.eval()
    record_task(model, task)
    return losses


def finetune(
    loaded,
    task,
    config: TrainConfig | None = None,
    hooks: Sequence[TrainingHook] = (),
    progress: Progress | None = None,
) -> list[float]:
    """Fine-tune a ``LoadedModel`` in place on ``task`` (name or :class:`Task`)."""
    return train(loaded.model, loaded.tokenizer, load_task(task), config, hooks, progress)


# The one recipe of every fine-tuned packaged model (minilm-rt and minilm-<task> for the suite's other tasks).
# Short snippets (Rotten Tomatoes: mean ~35 tokens; the suite's SMS, tweets and review/editorial sentences are of the
# same kind): 64 tokens covers nearly all; 2 epochs are enough (the resulting accuracy: the dense rows of
# docs/results/svd_baseline.md and docs/results/weighted.md).
MINILM_RT_CONFIG = TrainConfig(epochs=2.0, lr=8e-5, batch_size=32, max_length=64)
# Tests and quick trials: a JSON object whose fields (base, task, config: TrainConfig fields) replace those of every
# recipe recipe_for gives, e.g. '{"base": "/tmp/tiny-bert", "config": {"max_steps": 2}}'.
RECIPE_ENV = "LOWRANK_FINETUNE_RECIPE"


@dataclass
class Recipe:
    """How a fine-tuned model is built: ``base`` with a fresh classification head trained on ``task`` with ``config``
    (:class:`TrainConfig` fields), saved to the folder ``out``; ``name`` is how it is loaded afterwards (a packaged
    name, or ``out``)."""

    name: str
    base: str
    task: str
    out: str
    config: dict

    @property
    def built(self) -> bool:
        return has_weights(Path(self.out))

    @property
    def command(self) -> str:
        """The command line that builds the same model in the foreground."""
        if self.name in FINETUNED:
            return build_command(self.name)
        return f"lowrank finetune --model {shlex.quote(self.base)} --task {shlex.quote(self.task)} --out {shlex.quote(self.out)}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        return cls(**data)


def _packaged_recipe(name: str, config: TrainConfig = MINILM_RT_CONFIG) -> Recipe:
    """The recipe of the fine-tuned packaged model ``name``."""
    return Recipe(name, FINETUNED_BASE, FINETUNED[name], str(finetuned_dir(name)), asdict(config))


def recipe_for(model: str, task: str | None = None) -> Recipe:
    """The recipe that gives ``model`` a trained head for ``task``.

    A fine-tuned packaged name is its own recipe (``task`` is its own); ``minilm`` on a suite task builds that task's
    packaged model (``minilm-rt``...); any other model is fine-tuned into ``<cache>/finetuned/<model>-<task>-<hash>``
    with the default :class:`TrainConfig` (what ``lowrank finetune --out`` does). ``$LOWRANK_FINETUNE_RECIPE``
    (:data:`RECIPE_ENV`) replaces fields."""
    if model in FINETUNED:
        recipe = _packaged_recipe(model)
    elif task is None:
        raise ValueError(f"fine-tuning {model} needs a task")
    elif model == FINETUNED_BASE and task in FINETUNED.values():
        recipe = _packaged_recipe(finetuned_model(task))
    else:
        task = str(Path(task).resolve()) if Path(task).suffix.lower() == ".csv" else task
        digest = hashlib.sha1(f"{model}\n{task}".encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(model).name or model}-{Path(task).stem}")
        out = cache_dir() / "finetuned" / f"{slug}-{digest}"
        recipe = Recipe(str(out), model, task, str(out), asdict(TrainConfig()))
    override = os.environ.get(RECIPE_ENV)
    if not override:
        return recipe
    try:
        fields = json.loads(override)
    except ValueError as err:
        raise ValueError(f"${RECIPE_ENV} is not JSON: {err}") from err
    if not isinstance(fields, dict) or not isinstance(fields.get("config", {}), dict):
        raise ValueError(f"${RECIPE_ENV} must be a JSON object (its config one too), got {override!r}")
    unknown = sorted(set(fields) - {"base", "task", "config"})
    if unknown:
        raise ValueError(f"${RECIPE_ENV} may set base, task and config, not {', '.join(unknown)}")
    return replace(recipe, **{**fields, "config": {**recipe.config, **fields.get("config", {})}})


def build(recipe: Recipe, device: str = "cpu", progress: Progress | None = None) -> dict:
    """Fine-tune ``recipe.base`` with a fresh head on ``recipe.task`` and save it to ``recipe.out`` (atomic write: a
    build that stops half-way leaves no folder). Returns the training record (name, base, task, config, final
    training loss, validation accuracy), also saved as ``training.json``."""
    task_obj = load_task(recipe.task)
    config = TrainConfig(**recipe.config)
    loaded = load_model(recipe.base, task=task_obj, device=device)
    losses = train(loaded.model, loaded.tokenizer, task_obj, config, progress=progress)
    report(progress, len(losses), len(losses), "measuring the validation accuracy")
    record = {
        "name": recipe.name,
        "base": recipe.base,
        "task": task_obj.name,
        "task_source": task_obj.source,
        "sizes": task_obj.sizes(),
        "config": asdict(config),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "validation_accuracy": accuracy(loaded, task_obj, "validation"),
    }
    report(progress, len(losses), len(losses), "saving")
    with atomic_dir(Path(recipe.out), force=True) as tmp:  # our cache: a model folder there is ours
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
    return record


def build_finetuned(
    task: str, config: TrainConfig = MINILM_RT_CONFIG, device: str = "cpu", progress: Progress | None = None
) -> dict:
    """:func:`build` of the packaged model fine-tuned on the suite ``task`` (:data:`lowrank.models.packaged.MODELS`):
    ``minilm-rt`` for ``rotten_tomatoes``, ``minilm-<task>`` otherwise, under ``<cache>/models/<name>``."""
    return build(_packaged_recipe(finetuned_model(task), config), device, progress)


def build_minilm_rt(
    config: TrainConfig = MINILM_RT_CONFIG, device: str = "cpu", progress: Progress | None = None
) -> dict:
    """:func:`build_finetuned` on Rotten Tomatoes: the default model ``minilm-rt``."""
    return build_finetuned("rotten_tomatoes", config, device, progress)
