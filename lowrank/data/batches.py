"""Batches of a task for a tokenizer: labelled sentences, or token blocks for next-token loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from lowrank.data.tasks import Task, TaskError, Text

# A token is rarely longer than a few characters: a text cut at this many characters per kept token still fills
# max_length tokens, and tokenizing a huge cell (a 21 MB CSV row) costs microseconds instead of minutes and gigabytes.
CHARS_PER_TOKEN = 16


def clip(text: str, max_length: int) -> str:
    """``text`` cut to ``CHARS_PER_TOKEN * max_length`` characters (tokenization truncates to ``max_length`` anyway)."""
    return text[: CHARS_PER_TOKEN * max(1, int(max_length))]


def encode(tokenizer, texts: Sequence[Text], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize texts (or text pairs) into padded tensors; each text is clipped first (:func:`clip`)."""
    if texts and isinstance(texts[0], tuple):
        first, second = zip(*texts)
        return tokenizer(
            [clip(t, max_length) for t in first],
            [clip(t, max_length) for t in second],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    return tokenizer(
        [clip(t, max_length) for t in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )


def classification_batches(
    task: Task,
    tokenizer,
    split: str,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
) -> Iterator[dict]:
    """Yield tokenized batches with a ``labels`` tensor; ``limit`` caps the number of batches."""
    if task.kind != "classification":
        raise TaskError(f"task {task.name!r} is not a classification task")
    texts, labels = task.split_texts(split), task.labels[split]
    order = np.random.default_rng(seed).permutation(len(texts)) if shuffle else np.arange(len(texts))
    for count, start in enumerate(range(0, len(order), batch_size)):
        if limit is not None and count >= limit:
            return
        idx = order[start : start + batch_size]
        batch = dict(encode(tokenizer, [texts[i] for i in idx], max_length))
        batch["labels"] = torch.tensor([labels[i] for i in idx])
        yield batch


def lm_blocks(task: Task, tokenizer, split: str, block_size: int = 256) -> torch.Tensor:
    """Concatenate the split's documents (EOS-separated) into token blocks of ``block_size`` (n, block_size)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in task.split_texts(split):
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // block_size
    if n == 0:
        raise TaskError(f"split {split!r} of {task.name!r} has fewer than {block_size} tokens")
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


def lm_batches(
    task: Task,
    tokenizer,
    split: str,
    batch_size: int = 8,
    block_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
) -> Iterator[dict]:
    """Yield ``{"input_ids", "labels"}`` batches of token blocks for next-token loss."""
    blocks = lm_blocks(task, tokenizer, split, block_size)
    order = (
        torch.from_numpy(np.random.default_rng(seed).permutation(len(blocks))) if shuffle else torch.arange(len(blocks))
    )
    for count, start in enumerate(range(0, len(order), batch_size)):
        if limit is not None and count >= limit:
            return
        chunk = blocks[order[start : start + batch_size]]
        yield {"input_ids": chunk, "labels": chunk.clone()}


def batches(
    task: Task,
    tokenizer,
    split: str,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
) -> Iterator[dict]:
    """Task-appropriate batches: labelled sentences, or token blocks of ``max_length`` for LM tasks."""
    if task.kind == "lm":
        return lm_batches(task, tokenizer, split, batch_size, max_length, shuffle, seed, limit)
    return classification_batches(task, tokenizer, split, batch_size, max_length, shuffle, seed, limit)


def num_batches(task: Task, tokenizer, split: str, batch_size: int, max_length: int) -> int:
    if task.kind == "lm":
        return -(-len(lm_blocks(task, tokenizer, split, max_length)) // batch_size)
    return -(-task.size(split) // batch_size)
