"""Perplexity of a causal LM on a text split, under a named protocol.

Both protocols score sequences of at most ``N`` tokens (the window), in which every token but the first is
predicted from the ones before it; perplexity is ``exp(sum NLL / predicted tokens)`` over all of them.

* ``windows`` (:data:`WINDOWS`, the GPTQ / SVD-LLM convention): the split's documents concatenated,
  EOS-separated, cut into non-overlapping windows of ``N`` tokens, the last partial window dropped; the first
  token of each window is context only.
* ``per-document`` (:data:`PER_DOCUMENT`): each document on its own, ``[BOS or EOS] + tokens + [EOS]``, so that
  every document token and its end are predicted; a sequence longer than ``N`` is cut into windows that overlap
  by one token (each window's first token is the previous window's last predicted one).

``N`` defaults to :func:`default_window`: 2048 tokens when the model's context allows, else its context.
:func:`protocol_text` names the protocol in words; it is printed and stored with every perplexity, and runs are
compared only under the same text (:mod:`lowrank.experiments.compare`). Cost: one forward pass per sequence,
batched ``batch_size`` at a time (default: as many as fit :data:`TOKENS_PER_BATCH` tokens padded).
"""

from __future__ import annotations

import math

import torch

from lowrank.data.batches import lm_blocks
from lowrank.data.tasks import Task, TaskError
from lowrank.progress import report

WINDOWS = "windows"
PER_DOCUMENT = "per-document"
PROTOCOLS = (WINDOWS, PER_DOCUMENT)
DEFAULT_PROTOCOL = WINDOWS
DEFAULT_WINDOW = 2048  # tokens; capped by the model's context (default_window)
TOKENS_PER_BATCH = 2048  # the default batch holds about this many tokens


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"perplexity protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


def model_context(model) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings`` / ``n_positions``), if known."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def default_window(model) -> int:
    """:data:`DEFAULT_WINDOW` tokens, or the model's context when it is shorter."""
    context = model_context(model)
    return min(DEFAULT_WINDOW, context) if context else DEFAULT_WINDOW


def protocol_text(protocol: str, window: int) -> str:
    """The protocol in words, e.g. ``"windows of 2048 tokens (documents concatenated, EOS-separated; ...)"``."""
    if check_protocol(protocol) == WINDOWS:
        return f"windows of {window} tokens (documents concatenated, EOS-separated; the last partial window dropped)"
    return f"per-document (each document scored on its own, cut into windows of {window} tokens when longer)"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def window_sequences(task: Task, tokenizer, split: str, window: int) -> list[list[int]]:
    """The ``windows`` protocol's sequences: the token blocks of :func:`lowrank.data.batches.lm_blocks` (the split
    concatenated, EOS after each document, cut every ``window`` tokens), the blocks calibration uses."""
    return lm_blocks(task, tokenizer, split, window).tolist()


def document_sequences(task: Task, tokenizer, split: str, window: int) -> list[list[int]]:
    """The ``per-document`` protocol's sequences: ``[BOS or EOS] + doc + [EOS]`` per document, cut into windows of
    ``window`` tokens overlapping by one (so every token after the first is predicted exactly once)."""
    eos = tokenizer.eos_token_id
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if start is None:
        raise TaskError("per-document perplexity needs a tokenizer with a BOS or EOS token to start each document")
    if window < 2:
        raise ValueError(f"a window must hold at least 2 tokens, got {window}")
    sequences = []
    for doc in task.split_texts(split):
        ids = [start, *_ids(tokenizer, doc), *([eos] if eos is not None else [])]
        step = window - 1
        sequences.extend(ids[i : i + window] for i in range(0, len(ids) - 1, step))
    return sequences


def sequences_for(task: Task, tokenizer, split: str, protocol: str, window: int) -> list[list[int]]:
    if check_protocol(protocol) == WINDOWS:
        return window_sequences(task, tokenizer, split, window)
    return document_sequences(task, tokenizer, split, window)


def sequence_nll(model, sequences: list[list[int]], device, pad_id: int = 0) -> tuple[float, int]:
    """``(sum of next-token NLL, predicted tokens)`` over ``sequences`` in one padded forward pass (float64 sum)."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    predicted = mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(logits[predicted].float(), ids[:, 1:][predicted], reduction="sum")
    return float(nll), int(predicted.sum())


def _batches(sequences: list[list[int]], batch_size: int | None):
    """``sequences`` in order, ``batch_size`` at a time; ``None``: as many as fit :data:`TOKENS_PER_BATCH` tokens
    once padded to the longest (at least one)."""
    if batch_size is not None:
        yield from (sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size))
        return
    group: list[list[int]] = []
    longest = 0
    for sequence in sequences:
        wider = max(longest, len(sequence))
        if group and (len(group) + 1) * wider > TOKENS_PER_BATCH:
            yield group
            group, wider = [], len(sequence)
        group.append(sequence)
        longest = wider
    if group:
        yield group


def perplexity_scores(
    loaded,
    task: Task,
    split: str = "validation",
    protocol: str = DEFAULT_PROTOCOL,
    window: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    progress=None,
) -> tuple[float, float, int]:
    """``(perplexity, mean NLL per predicted token, predicted tokens)`` of a causal LM on ``split`` under
    ``protocol`` with windows of ``window`` tokens (default :func:`default_window`); ``batch_size`` sequences per
    forward pass (default: :func:`_batches` by tokens); ``limit`` caps the batches."""
    window = window or default_window(loaded.model)
    sequences = sequences_for(task, loaded.tokenizer, split, protocol, window)
    groups = list(_batches(sequences, batch_size))[:limit]
    pad = loaded.tokenizer.pad_token_id
    model = loaded.model
    model.eval()
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for i, group in enumerate(groups):
            batch_nll, batch_tokens = sequence_nll(model, group, loaded.device, pad if pad is not None else 0)
            nll, tokens = nll + batch_nll, tokens + batch_tokens
            report(progress, i + 1, len(groups), f"evaluating {split}")
    mean = nll / tokens
    return (math.exp(mean) if mean < 700 else math.inf), mean, tokens
