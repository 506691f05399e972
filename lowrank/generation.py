"""Greedy text generation from a causal LM, and the same prompts through several models side by side.

:func:`generate`: each prompt alone (no padding), tokenized without special tokens after the tokenizer's BOS when it
has one (as :mod:`lowrank.data.batches` reads documents), then ``max_new_tokens`` greedy steps
``x_{t+1} = argmax_v p(v | x_{<=t})``, stopping early only at the EOS token. No sampling: the same model and prompt
give the same text on every run, so a dense model and its compressed copy differ only by their weights.
:func:`compare_generations` runs the same prompts through several models. Cost: ``max_new_tokens`` forward steps per
prompt with the key-value cache.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import GenerationConfig

from lowrank.loaded import LoadedModel
from lowrank.progress import Progress, report

DEFAULT_PROMPTS = (
    "The history of the city begins",
    "Scientists have found that",
    "The best way to learn a language is",
)
DEFAULT_TOKENS = 32
MAX_TOKENS = 1024


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation: ``text`` (without the prompt), ``tokens`` generated, wall ``seconds``."""

    prompt: str
    text: str
    tokens: int
    seconds: float
    stopped_at_eos: bool


def check_prompts(prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """The prompts as a list; ``ValueError`` for none, an empty one, or a token count outside 1..MAX_TOKENS."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("a prompt is empty: give some text to continue")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_TOKENS:
        raise ValueError(
            f"the number of new tokens must be a whole number from 1 to {MAX_TOKENS}, got {max_new_tokens!r}"
        )
    return prompts


def generate(
    loaded: LoadedModel,
    prompts: Sequence[str] | str = DEFAULT_PROMPTS,
    max_new_tokens: int = DEFAULT_TOKENS,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> list[Generation]:
    """Greedy continuations of ``prompts`` by the causal LM ``loaded`` (dense or compressed), on ``device`` (the
    model is moved there; default: where it is). ``ValueError`` for a model that is not a causal LM and for bad
    prompts or token counts (:func:`check_prompts`)."""
    prompts = check_prompts(prompts, max_new_tokens)
    if loaded.kind != "causal-lm":
        raise ValueError(f"{loaded.name} is not a causal language model ({loaded.kind}): it does not generate text")
    model, tokenizer = loaded.model, loaded.tokenizer
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    results = []
    for step, prompt in enumerate(prompts):
        report(progress, step, len(prompts), f"generating for prompt {step + 1}")
        ids = torch.tensor([bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1] :].tolist()
        stopped = bool(new) and eos is not None and new[-1] == eos
        text = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
        results.append(Generation(prompt, text, len(new), seconds, stopped))
    report(progress, len(prompts), len(prompts), "generations done")
    return results


def compare_generations(
    models: Mapping[str, LoadedModel],
    prompts: Sequence[str] | str = DEFAULT_PROMPTS,
    max_new_tokens: int = DEFAULT_TOKENS,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """The same prompts through every model of ``models`` ({label: model}): one row per prompt, a column of text
    per label (``prompt``, then the labels in order)."""
    prompts = check_prompts(prompts, max_new_tokens)
    table = {"prompt": prompts}
    for label, loaded in models.items():
        table[label] = [g.text for g in generate(loaded, prompts, max_new_tokens, device)]
    return pd.DataFrame(table)
