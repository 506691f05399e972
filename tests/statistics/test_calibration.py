"""Calibration as settings: a corpus and a number of tokens, recorded; warnings for a small or foreign sample; the
gradient habits (edge tokens dropped, token norms clipped) of the gradient-moment collector."""

from __future__ import annotations

import pytest
import torch

from lowrank import load_model
from lowrank.statistics import StatisticsSettings, statistics_for
from lowrank.statistics.moments import shape_gradients
from lowrank.statistics.passes import calibration_record
from lowrank.statistics.settings import DEFAULT, SMALL_CALIBRATION_TOKENS, calibration_notes

SETTINGS = StatisticsSettings(num_batches=2, batch_size=2, max_length=16)


def test_tokens_round_up_to_whole_batches_and_old_cache_keys_stay():
    assert DEFAULT.for_tokens(65_536).num_batches == 32 and DEFAULT.for_tokens(65_537).num_batches == 33
    assert DEFAULT.for_tokens(1).tokens == 16 * 128
    assert DEFAULT.for_tokens(None).num_batches > 10**9  # all: capped by the split
    # fields added later are left out of keys at their defaults: caches written before them stay valid
    assert set(DEFAULT.to_dict()) == {"num_batches", "batch_size", "max_length", "labels", "split", "seed"}
    assert DEFAULT.with_(task="lee", grad_edge=0.125).to_dict()["task"] == "lee"
    for bad in ({"grad_edge": 0.5}, {"grad_edge": -0.1}, {"grad_clip": float("nan")}, {"task": " "}):
        with pytest.raises(ValueError):
            DEFAULT.with_(**bad)
    with pytest.raises(ValueError, match="calibration tokens"):
        DEFAULT.for_tokens(0)


def test_notes_say_when_the_sample_is_small_or_another_corpus():
    big = {"task": "lee", "tokens": SMALL_CALIBRATION_TOKENS}
    assert calibration_notes(big, "lee") == [] and calibration_notes(big, None) == []
    assert calibration_notes({"task": "rotten_tomatoes:text", "tokens": 10**6}, "rotten_tomatoes") == []
    small = calibration_notes({"task": "lee", "tokens": 8192}, "rotten_tomatoes:text")
    assert len(small) == 2 and "8,192 tokens of lee" in small[0] and "evaluated on rotten_tomatoes:text" in small[1]


def test_the_calibration_task_replaces_the_task_and_is_recorded(tiny_llama_dir, text_task, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(["a completely different corpus of words about cats and trains"] * 40))
    loaded = load_model(str(tiny_llama_dir))
    settings = SETTINGS.with_(task=str(other))
    a = statistics_for(loaded, text_task, ("activations",), settings, use_cache=False)
    b = statistics_for(loaded, str(other), ("activations",), SETTINGS, use_cache=False)
    c = statistics_for(loaded, text_task, ("activations",), SETTINGS, use_cache=False)
    name = next(iter(a))
    assert torch.equal(a[name]["input_moment"], b[name]["input_moment"])
    assert not torch.equal(a[name]["input_moment"], c[name]["input_moment"])
    record = calibration_record(text_task, loaded.tokenizer, settings)
    assert record == {"task": "other", "split": "train", "examples": 4, "tokens": 64, "seed": 0}


def test_gradient_shaping_drops_window_edges_and_clips_token_norms():
    g = torch.randn(3, 16, 5, generator=torch.Generator().manual_seed(0))
    dropped = shape_gradients(g, 0.125, 0.0, None)
    assert dropped[:, :2].abs().sum() == 0 and dropped[:, -2:].abs().sum() == 0
    assert torch.equal(dropped[:, 2:-2], g[:, 2:-2]) and torch.equal(
        shape_gradients(g, 0.1, 0.0, None)[:, 1:-1], g[:, 1:-1]
    )
    g[0, 3] *= 100  # one outlier token
    clipped = shape_gradients(g, 0.0, 2.0, None)
    norms, cap = g.norm(dim=-1), 2.0 * g.norm(dim=-1).flatten().median()
    assert torch.allclose(clipped.norm(dim=-1), torch.minimum(norms, cap), rtol=1e-5)
    assert torch.equal(shape_gradients(g, 0.0, 0.0, None), g)


def test_gradient_habits_change_only_the_gradient_moment(tiny_llama_dir, text_task):
    loaded = load_model(str(tiny_llama_dir))
    plain = statistics_for(loaded, text_task, ("activations", "gradients"), SETTINGS, use_cache=False)
    shaped = statistics_for(
        loaded, text_task, ("activations", "gradients"), SETTINGS.with_(grad_edge=0.25, grad_clip=1.5), use_cache=False
    )
    name = "model.layers.1.mlp.down_proj"
    assert torch.equal(plain[name]["input_moment"], shaped[name]["input_moment"])
    assert not torch.allclose(plain[name]["grad_moment"], shaped[name]["grad_moment"])
    assert float(torch.trace(shaped[name]["grad_moment"])) < float(torch.trace(plain[name]["grad_moment"]))
