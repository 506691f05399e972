"""Greedy generation: the argmax continuation, the same prompts through several models, the CLI and its errors."""

from __future__ import annotations

import pytest
import torch

import lowrank
from lowrank.generation import compare_generations, generate
from tests.robustness.cli_errors import assert_clear_error, run


def manual_greedy(loaded, prompt: str, steps: int) -> list[int]:
    """Greedy decoding by its definition: the whole sequence through the model each step, no cache."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            logits = loaded.model(torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] == loaded.tokenizer.eos_token_id:
                break
    return new


def test_generate_is_the_argmax_continuation_and_repeats_exactly(tiny_llama):
    prompts = ["good fun movie", "a dull and tired plot"]
    first = generate(tiny_llama, prompts, max_new_tokens=12)
    for generation in first:
        expected = manual_greedy(tiny_llama, generation.prompt, 12)
        stop = expected[-1] == tiny_llama.tokenizer.eos_token_id
        assert generation.tokens == len(expected) and generation.stopped_at_eos == stop
        assert generation.text == tiny_llama.tokenizer.decode(
            expected[:-1] if stop else expected, skip_special_tokens=True
        )
    assert [g.text for g in generate(tiny_llama, prompts, max_new_tokens=12)] == [g.text for g in first]


def test_compare_runs_the_same_prompts_through_each_model(tiny_llama):
    small = lowrank.compress(tiny_llama, 0.3, method="svd")
    table = compare_generations({"dense": tiny_llama, "svd 30%": small}, ["good fun movie"], max_new_tokens=8)
    assert list(table.columns) == ["prompt", "dense", "svd 30%"]
    assert table["dense"][0] == generate(tiny_llama, "good fun movie", 8)[0].text
    assert table["svd 30%"][0] == generate(small, "good fun movie", 8)[0].text


@pytest.mark.parametrize(
    "prompts, tokens, match",
    [([], 4, "at least one prompt"), (["  "], 4, "prompt is empty"), (["a"], 0, "from 1 to"), (["a"], 2.5, "whole")],
)
def test_bad_prompts_and_token_counts_are_refused(tiny_llama, prompts, tokens, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_llama, prompts, tokens)


def test_an_encoder_does_not_generate(tiny_bert):
    with pytest.raises(ValueError, match="not a causal language model"):
        generate(tiny_bert, "hello", 4)


def test_cli_generate_side_by_side_and_its_errors(capsys, tmp_path, tiny_llama_dir, tiny_bert_dir):
    folder = tmp_path / "small"
    lowrank.save_compressed(lowrank.compress(lowrank.load_model(str(tiny_llama_dir)), 0.5, method="svd"), folder)
    code, out, err = run(
        capsys, "generate", "--model", tiny_llama_dir, "--compare", folder, "--prompt", "good fun", "--tokens", 6
    )
    assert code == 0, err
    assert "prompt: good fun" in out and f"{tiny_llama_dir}:" in out and f"{folder}:" in out
    assert_clear_error(*run(capsys, "generate", "--model", tiny_llama_dir, "--tokens", 0)[::2], "--tokens")
    assert_clear_error(*run(capsys, "generate", "--model", tiny_bert_dir)[::2], "not a causal language model")
    assert_clear_error(*run(capsys, "generate", "--model", tmp_path / "missing")[::2])
    assert_clear_error(*run(capsys, "generate", "--model", tiny_llama_dir, "--prompt", " ")[::2], "prompt is empty")
