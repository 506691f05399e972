"""Fine-tuning loop with hooks (used for the fine-tuned packaged models, pruning and mixed-rank training).

AdamW with linear warm-up then linear decay, on the task's training split. Hooks see
the model at three points of every step, which is how movement pruning accumulates
scores and re-applies masks, and how mixed-rank training anneals its probability::

    hook.on_start(model, total_steps)
    loss.backward(); hook.after_backward(model, step)
    optimizer.step(); hook.after_step(model, step)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from lowrank.data.batches import batches, num_batches
from lowrank.data.tasks import Task, load_task
from lowrank.evaluate import accuracy
from lowrank.io import atomic_dir
from lowrank.models.labels import check_labels, record_task
from lowrank.models.loading import load_model
from lowrank.models.packaged import FINETUNED_BASE, finetuned_dir, finetuned_model
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
    max_steps: Optional[int] = None


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


def train(model: nn.Module, tokenizer, task: Task, config: TrainConfig = TrainConfig(),
          hooks: Sequence[TrainingHook] = (), progress: Optional[Progress] = None) -> list[float]:
    """Train ``model`` in place on ``task``'s training split; returns the loss per step.

    The task's labels are checked against the model's (:func:`lowrank.models.labels.check_labels`) and the
    task is recorded in the model's config (``lowrank_task``, saved with it): commands default to it later."""
    task = check_labels(model, task)
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    per_epoch = num_batches(task, tokenizer, "train", config.batch_size, config.max_length)
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    warmup = int(config.warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, total, warmup))
    for hook in hooks:
        hook.on_start(model, total)
    model.train()
    losses: list[float] = []
    epoch = 0
    while len(losses) < total:
        for batch in batches(task, tokenizer, "train", config.batch_size, config.max_length, shuffle=True, seed=config.seed + epoch):
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


def finetune(loaded, task, config: TrainConfig = TrainConfig(), hooks: Sequence[TrainingHook] = (),
             progress: Optional[Progress] = None) -> list[float]:
    """Fine-tune a ``LoadedModel`` in place on ``task`` (name or :class:`Task`)."""
    return train(loaded.model, loaded.tokenizer, load_task(task), config, hooks, progress)


# The one recipe of every fine-tuned packaged model (minilm-rt and minilm-<task> for the suite's other tasks).
# Short snippets (Rotten Tomatoes: mean ~35 tokens; the suite's SMS, tweets and review/editorial sentences are of the
# same kind): 64 tokens covers nearly all; 2 epochs are enough (the resulting accuracy: the dense rows of
# docs/results/svd_baseline.md and docs/results/weighted.md).
MINILM_RT_CONFIG = TrainConfig(epochs=2.0, lr=8e-5, batch_size=32, max_length=64)


def build_finetuned(task: str, config: TrainConfig = MINILM_RT_CONFIG, device: str = "cpu",
                    progress: Optional[Progress] = None) -> dict:
    """Fine-tune packaged MiniLM on a suite ``task`` and cache it as its packaged model (atomic write).

    ``minilm-rt`` for ``rotten_tomatoes``, ``minilm-<task>`` otherwise
    (:data:`lowrank.models.packaged.MODELS`), under ``<cache>/models/<name>``; a build that
    stops half-way leaves no folder. A fresh classification head on ``minilm``, then
    :func:`train` with ``config``. Returns the training record (name, task, config, final
    training loss, validation accuracy), also saved as ``training.json``.
    """
    name = finetuned_model(task)
    task_obj = load_task(task)
    loaded = load_model(FINETUNED_BASE, task=task_obj, device=device)
    losses = train(loaded.model, loaded.tokenizer, task_obj, config, progress=progress)
    record = {"name": name, "base": FINETUNED_BASE, "task": task_obj.name, "task_source": task_obj.source,
              "sizes": task_obj.sizes(), "config": asdict(config),
              "final_loss": sum(losses[-20:]) / len(losses[-20:]),
              "validation_accuracy": accuracy(loaded, task_obj, "validation")}
    with atomic_dir(finetuned_dir(name), force=True) as tmp:  # our cache: a model folder there is ours
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
    return record


def build_minilm_rt(config: TrainConfig = MINILM_RT_CONFIG, device: str = "cpu", progress: Optional[Progress] = None) -> dict:
    """:func:`build_finetuned` on Rotten Tomatoes: the default model ``minilm-rt``."""
    return build_finetuned("rotten_tomatoes", config, device, progress)
