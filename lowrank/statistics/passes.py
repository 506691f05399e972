"""The one calibration pass every statistic uses, data-parallel under torch.distributed.

``calibration_pass`` runs ``settings.num_batches`` shuffled batches of the task through the model in eval mode
(no dropout: the deployed function), with a backward pass of the task loss when the collectors need gradients,
and returns the number of examples seen; each collector gets the batch size (``scale``) and the mask of real
tokens (``mask``) before each batch. Under a process group (``torchrun`` / ``accelerate launch``;
:func:`init_from_env`) rank ``k`` of ``n`` takes batches ``k, k+n, ...`` and every accumulator and the example
count are all-reduced once at the end; only rank 0 writes caches (:func:`is_main`). Cost: one forward (and
backward) per batch, one all-reduce. Details: docs/methods.md#scale-layer-sequential-compression-and-data-parallel-statistics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from lowrank.data import batches, load_task, num_batches
from lowrank.progress import Progress, report
from lowrank.statistics.moments import SharedInputs, begin_batch
from lowrank.statistics.settings import StatisticsSettings

BACKWARD_TOKENS = 512  # tokens of a causal LM per backward pass (backward_parts)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA).

    Returns True when this process is part of a group of more than one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def all_reduce(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the process group, in place (nothing without a group)."""
    if world()[1] > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def calibration_task(task, settings: StatisticsSettings):
    """The corpus the statistics are computed on: ``settings.task`` when set, else ``task`` (the one asked for)."""
    return task if settings.task is None else settings.task


def calibration_record(task, tokenizer, settings: StatisticsSettings, sample: Iterable[dict] | None = None) -> dict:
    """What the calibration sample of ``settings`` is (for ``CompressionInfo.calibration`` and warnings):
    ``task`` (name), ``split``, ``examples``, ``tokens`` (real, non-padding tokens) and ``seed``; ``sample``: its
    batches when they are at hand (else they are made again)."""
    task = load_task(calibration_task(task, settings))
    examples = tokens = 0
    for batch in calibration_batches(task, tokenizer, settings)[1] if sample is None else sample:
        mask = batch.get("attention_mask")
        examples += int(batch["input_ids"].shape[0])
        tokens += int(batch["input_ids"].numel() if mask is None else mask.sum())
    return {"task": task.name, "split": settings.split, "examples": examples, "tokens": tokens, "seed": settings.seed}


def calibration_batches(task, tokenizer, settings: StatisticsSettings) -> tuple[int, Iterator[dict]]:
    """The sample every statistic is computed on: ``(count, batches)``, at most ``settings.num_batches``
    shuffled batches of ``settings.split`` (seed ``settings.seed``)."""
    s = settings
    total = min(s.num_batches, num_batches(task, tokenizer, s.split, s.batch_size, s.max_length))
    return total, batches(task, tokenizer, s.split, s.batch_size, s.max_length, shuffle=True, seed=s.seed, limit=total)


@contextmanager
def activation_gradients_only(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes inside compute activation gradients only, no weight gradients.

    The statistics need each Linear's input ``x`` and output gradient ``g``; autograd's weight
    gradient ``dW = sum_t g_t x_t^T`` would cost as much as the rest of the backward pass and be
    thrown away. So the parameters are frozen for the pass and the input embeddings' output is
    made to require grad, which keeps every layer above it on the autograd tape."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    handle = model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_())
    try:
        yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def backward_parts(loaded, batch: dict) -> list[dict]:
    """``batch`` split for its backward passes: a causal LM's into parts of at most :data:`BACKWARD_TOKENS` tokens
    (whole examples), so the autograd graph and the logits (tokens x vocabulary) of one backward pass stay
    bounded; a classifier's whole. Per-example statistics do not depend on the split."""
    examples, length = batch["input_ids"].shape[:2]
    if loaded.kind != "causal-lm":
        return [batch]
    step = max(1, BACKWARD_TOKENS // length)
    return [{k: v[start : start + step] for k, v in batch.items()} for start in range(0, examples, step)]


def _feed(
    loaded, batch: dict, collectors: dict, shared: SharedInputs, settings: StatisticsSettings, backward_fn, generator
) -> int:
    """One forward (and, with ``backward_fn``, backward) pass of ``batch`` into ``collectors``; returns its
    (example, label) samples."""
    batch = {k: v.to(loaded.device) for k, v in batch.items()}
    mask = batch.get("attention_mask")
    begin_batch(collectors.values(), batch["input_ids"].shape[0], None if mask is None else mask.bool(), shared)
    if backward_fn is None:
        with torch.no_grad():
            loaded.model(**{k: v for k, v in batch.items() if k != "labels"})
        return batch["input_ids"].shape[0]
    loaded.model.zero_grad(set_to_none=True)
    return batch["input_ids"].shape[0] * backward_fn(loaded, batch, settings, generator)


def calibration_pass(
    loaded,
    task,
    collectors: dict,
    settings: StatisticsSettings,
    backward_fn,
    backward: bool,
    progress: Progress | None,
    message: str,
) -> int:
    """Feed ``collectors`` (each with ``scale``, ``mask``, ``accumulators()`` and ``remove()``) from one pass.

    With ``backward``, ``backward_fn(loaded, batch, settings, generator)`` runs the batch's backward
    pass(es) and returns how many (one per sampled label draw). Returns the number of
    (example, label) samples over all ranks; the collectors' accumulators are all-reduced."""
    model, s = loaded.model, settings
    rank, size = world()
    total, sample = calibration_batches(task, loaded.tokenizer, s)
    generator = torch.Generator().manual_seed(s.seed)
    was_training = model.training
    model.eval()
    examples, shared = 0, SharedInputs()
    try:
        with activation_gradients_only(model) if backward else nullcontext():
            for step, batch in enumerate(sample):
                if step % size != rank:
                    continue
                for part in backward_parts(loaded, batch) if backward else [batch]:
                    examples += _feed(loaded, part, collectors, shared, s, backward_fn if backward else None, generator)
                report(progress, step + 1, total, message)
    finally:
        shared.clear()
        for c in collectors.values():
            c.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    count = torch.tensor([float(examples)], dtype=torch.float64)
    all_reduce([count, *(t for c in collectors.values() for t in c.accumulators())])
    return int(count.item())
