"""Throughput: tokens/s of prefill and decode against dense, peak memory and the FLOP bound."""

import pytest
import torch

from lowrank import compress, evaluate
from lowrank.evaluation.throughput import (
    ThroughputSettings,
    attention_width,
    flops_per_token,
    throughput_sentence,
)

QUICK = ThroughputSettings(batches=(1, 2), length=16, prompt=4, new_tokens=4, budget_s=0.3)


def test_flops_per_token_count_every_linear_and_the_attention_scores(tiny_llama):
    module = tiny_llama.model
    layers, width = attention_width(module.config)
    every_linear = sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))
    head = module.lm_head.in_features * module.lm_head.out_features  # tied to the embedding: counted all the same
    flops = flops_per_token(tiny_llama, QUICK)
    mean_context = QUICK.prompt + QUICK.new_tokens / 2  # steps 2..N of generation: contexts prompt+1..prompt+N-1
    assert flops["decode"] == pytest.approx(2 * every_linear + 4 * layers * width * mean_context)
    body = every_linear - head  # prefill: the LM head runs on the last position only
    prefill = 2 * body + 2 * head / QUICK.length + 4 * layers * width * (QUICK.length + 1) / 2
    assert flops["prefill"] == pytest.approx(prefill)

    small = compress(tiny_llama, 0.5)
    ranks = small.model.lowrank_info.ranks
    saved = sum(
        2 * (m.in_features * m.out_features - r * (m.in_features + m.out_features))
        for name, r in ranks.items()
        for m in [module.get_submodule(name)]
    )
    assert flops_per_token(small, QUICK)["decode"] == pytest.approx(flops["decode"] - saved)


def test_throughput_is_measured_against_dense_and_stored_in_the_evaluation(tiny_llama, text_task):
    small = compress(tiny_llama, 0.5)
    calls = []
    result = evaluate(
        small,
        text_task,
        limit=1,
        latency=False,
        throughput=QUICK,
        reference=tiny_llama,
        max_length=16,
        progress=lambda d, t, m: calls.append(m),
    )
    speed = result.throughput
    for key in ("prefill_b1", "decode_b1", "prefill_b2", "decode_b2"):
        assert speed[key] > 0 and speed["dense"][key] > 0
        assert speed["ratio"][key] == pytest.approx(speed[key] / speed["dense"][key])
        assert speed["bound"][key] > 1.0  # fewer FLOPs per token than dense
        assert speed["of_bound"][key] == pytest.approx(speed["ratio"][key] / speed["bound"][key])
    assert speed["peak_bytes"] > 0 and speed["how"]["conditions"]["threads"] == torch.get_num_threads()
    assert speed["how"]["settings"]["new_tokens"] == 4
    assert any(m.startswith("dense: decode") for m in calls) and calls[-1] == "throughput measured"
    flat = result.to_dict()
    assert flat["decode_b1_vs_dense"] == speed["ratio"]["decode_b1"] and "KV cache" in flat["throughput_note"]
    sentence = throughput_sentence(speed)
    assert "the dense model's tokens per second at batch 1" in sentence and "of the FLOP bound" in sentence


def test_an_encoder_has_prefill_only(tiny_bert, sentiment_csv):
    small = compress(tiny_bert, 0.5)
    speed = evaluate(small, sentiment_csv, limit=1, latency=False, throughput=QUICK, reference=tiny_bert).throughput
    assert set(speed["ratio"]) == {"prefill_b1", "prefill_b2"} and "decode" not in speed["flops"]


@pytest.mark.parametrize(
    "bad, match", [({"new_tokens": 1}, "at least 2"), ({"length": 0}, "length"), ({"batches": (0,)}, "batches")]
)
def test_bad_throughput_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ThroughputSettings(**bad)
