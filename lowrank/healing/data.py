"""The text healing trains on: batches of the task's training split, a held-out slice of it kept aside.

A causal LM gets token blocks of ``max_length`` (the documents concatenated, EOS-separated:
:func:`lowrank.data.batches.lm_batches`), a classifier its training texts (their labels dropped: healing distils
toward the dense model, it needs none). The batches are shuffled with ``seed``; the last ``heldout_batches`` are the
held-out text of early stopping, the first ones, up to ``tokens`` real tokens, the training text. The validation
split is never read.
"""

from __future__ import annotations

from lowrank.data.batches import batches
from lowrank.data.tasks import Task, TaskError
from lowrank.healing.config import SPLIT, HealConfig

UNLABELLED = ("labels",)


def tokens_in(batch: dict) -> int:
    """Real (non-padding) tokens of a batch."""
    mask = batch.get("attention_mask")
    return int(batch["input_ids"].numel() if mask is None else mask.sum())


def heal_batches(task: Task, tokenizer, config: HealConfig) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)`` lists of unlabelled batches of ``task``'s training split (see the module docstring)."""
    every = [
        {k: v for k, v in b.items() if k not in UNLABELLED}
        for b in batches(task, tokenizer, SPLIT, config.batch_size, config.max_length, shuffle=True, seed=config.seed)
    ]
    if len(every) <= config.heldout_batches:
        raise TaskError(
            f"the {SPLIT} split of {task.name!r} gives {len(every)} batch(es) of {config.batch_size} x "
            f"{config.max_length} tokens; healing holds {config.heldout_batches} out and needs at least one more "
            "(lower heldout_batches, batch_size or max_length)"
        )
    train, heldout = every[: -config.heldout_batches], every[-config.heldout_batches :]
    if config.tokens is not None:
        kept, seen = [], 0
        for batch in train:
            if seen >= config.tokens:
                break
            kept.append(batch)
            seen += tokens_in(batch)
        train = kept
    return train, heldout
