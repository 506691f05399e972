"""End-to-end healing: the compressed model distilled toward the dense model's output distribution.

Objective, over the training batches ``B`` (the calibration text: :mod:`lowrank.healing.data`)::

    min_theta  mean_{positions t of B} T^2 KL( p_dense^T(. | x_{<=t}) || p_theta^T(. | x_{<=t}) )

``p^T = softmax(logits / T)`` at the config's ``temperature`` (:mod:`lowrank.healing.loss`); ``p``: next-token distribution of a causal LM (every token of the block), class distribution of a classifier (one
position per text; no labels used). ``theta``: every ``LowRankLinear``'s ``U``, ``V`` and, with ``norms``, the norm
weights; the rest, and the dense model, frozen. AdamW at ``lr`` after a linear warm-up, one batch per step, both
models in eval mode (no dropout: the deployed function). The same KL on the held-out batches is measured first
(the unhealed model) and every ``eval_every`` steps; the parameters of the lowest held-out value are kept and
restored at the end, so the returned held-out loss is never above the unhealed one (a run that only gets worse
returns the model unchanged). With ``backoff`` (``beta``), a measurement without a new best restarts training from
that checkpoint at ``beta`` times the learning rate (fresh AdamW moments, warm-up again): a step size that
overshoots is made smaller instead of carried on. Training stops at ``steps``, at the time budget, after
``patience`` measurements without a new best, or when the training loss stops being finite. The forward passes of a
training step run at the config's ``precision`` (:mod:`lowrank.healing.precision`), the held-out ones in float32.
Cost per step: one forward of the dense model, one forward and backward of the compressed one.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lowrank.healing.config import HealConfig
from lowrank.healing.loss import kl_mean, kl_sum
from lowrank.healing.params import optimizer, restore, snapshot, train_only, trainable
from lowrank.healing.precision import training_precision
from lowrank.progress import Progress, report


def logits(model: nn.Module, batch: dict, kind: str) -> torch.Tensor:
    """The model's logits for ``batch`` (already on its device): (batch, T, vocabulary) or (batch, classes)."""
    extra = {"use_cache": False} if kind == "causal-lm" else {}
    return model(**batch, **extra).logits


def positions_mask(batch: dict, kind: str) -> torch.Tensor | None:
    """The real positions the KL averages over: a causal LM's non-padding tokens; every example of a classifier."""
    return batch.get("attention_mask") if kind == "causal-lm" else None


def heldout_kl(
    model: nn.Module, dense: nn.Module, batches: list[dict], kind: str, device, temperature: float = 1.0
) -> float:
    """Mean ``T^2 KL(p_dense || p_model)`` at ``temperature`` T over the real positions of ``batches``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            part, n = kl_sum(
                logits(dense, batch, kind), logits(model, batch, kind), positions_mask(batch, kind), temperature
            )
            total, count = total + float(part), count + n
    return total / max(1, count)


def distill(
    model: nn.Module,
    dense: nn.Module,
    kind: str,
    train: list[dict],
    heldout: list[dict],
    config: HealConfig,
    deadline: float = float("inf"),
    progress: Progress | None = None,
    start_loss: float | None = None,
) -> dict:
    """Train ``model`` in place toward ``dense`` (see the module docstring); returns the record: steps taken, the
    best step, why it stopped, the held-out KL at start and at the kept step, and every measurement.
    ``start_loss``: the held-out KL of ``model`` as it is, when the caller measured it already."""
    device = next(model.parameters()).device
    params = trainable(model, config.norms)
    was_training, model_flags = model.training, {n: p.requires_grad for n, p in model.named_parameters()}
    train_only(model, params)
    model.eval()
    clock = time.monotonic()
    start = heldout_kl(model, dense, heldout, kind, device, config.temperature) if start_loss is None else start_loss
    # kept free before the deadline: the longest step so far and the last held-out measurement, so the measurement
    # of the last steps ends within the budget
    step_s, eval_s = 0.0, (time.monotonic() - clock if start_loss is None else 0.0)
    best, best_step, best_state = start, 0, snapshot(params)
    measured = [[0, start]]
    lr = config.lr
    opt, schedule = warmed_up(params, lr, config)
    rates = [[0, lr]]  # [step, learning rate] at the start and at every back-off
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    losses: list[float] = []
    stop, since_best = "steps", 0
    report(progress, 0, config.steps, "healing end to end")
    try:
        while len(losses) < config.steps:
            if time.monotonic() + step_s + eval_s >= deadline:
                stop = "time budget"
                break
            clock = time.monotonic()
            if not order:
                order = torch.randperm(len(train), generator=generator).tolist()
            batch = {k: v.to(device) for k, v in train[order.pop()].items()}
            with training_precision(config.precision, device):
                with torch.no_grad():
                    target = logits(dense, batch, kind)
                output = logits(model, batch, kind)
            loss = kl_mean(target, output, positions_mask(batch, kind), config.temperature)
            if not torch.isfinite(loss):
                stop = "diverged"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(float(loss.detach()))
            step = len(losses)
            step_s = max(step_s, time.monotonic() - clock)
            if step % config.eval_every == 0 or step == config.steps:
                clock = time.monotonic()
                value = heldout_kl(model, dense, heldout, kind, device, config.temperature)
                eval_s = time.monotonic() - clock
                measured.append([step, value])
                if value < best:
                    best, best_step, best_state, since_best = value, step, snapshot(params), 0
                else:
                    since_best += 1
                if since_best >= config.patience:
                    stop = "no better held-out loss"
                    break
                if since_best and config.backoff is not None:
                    restore(params, best_state)
                    lr *= config.backoff
                    opt, schedule = warmed_up(params, lr, config)
                    rates.append([step, lr])
            report(progress, step, config.steps, f"healing, KL {sum(losses[-10:]) / len(losses[-10:]):.4f}")
        if stop != "diverged" and losses and measured[-1][0] != len(losses):
            value = heldout_kl(
                model, dense, heldout, kind, device, config.temperature
            )  # the steps since the last measurement
            measured.append([len(losses), value])
            if value < best:
                best, best_step, best_state = value, len(losses), snapshot(params)
    finally:
        restore(params, best_state)
        for name, p in model.named_parameters():
            p.requires_grad_(model_flags[name])
        model.train(was_training)
    report(progress, config.steps, config.steps, f"healed: held-out KL {start:.4f} -> {best:.4f}")
    return {
        "steps": len(losses),
        "best_step": best_step,
        "stopped": stop,
        "heldout_before": start,
        "heldout_after": best,
        "heldout": measured,
        "learning_rates": rates,
        "train_loss": losses,
    }


def warmed_up(params: dict, lr: float, config: HealConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """A fresh AdamW at ``lr`` (:func:`~lowrank.healing.params.optimizer`) and its linear warm-up over
    ``config.warmup_steps`` steps."""
    opt = optimizer(params, lr, config.weight_decay)
    warmup = max(1, config.warmup_steps)
    return opt, LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
