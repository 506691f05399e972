import json
import sys
from dataclasses import replace

import pytest
import torch

from lowrank import (
    CompressionInfo,
    LowRankLinear,
    compress,
    compressible_linears,
    load_compressed,
    resolve_ranks,
    save_compressed,
)
from lowrank.info import load_info
from lowrank.ranks import fraction_rank, linear_shapes


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


def test_compressible_layers_of_bert_and_llama(tiny_bert, tiny_llama):
    bert = list(compressible_linears(tiny_bert.model))
    assert len(bert) == 12  # 2 blocks x (q, k, v, attn-out, ffn-up, ffn-down)
    assert not any("classifier" in n or "pooler" in n for n in bert)
    llama = list(compressible_linears(tiny_llama.model))
    assert len(llama) == 14 and all("lm_head" not in n for n in llama)
    assert any(n.endswith("mlp.gate_proj") for n in llama)


def test_fraction_resolves_to_ranks_below_break_even(tiny_bert):
    ranks = resolve_ranks(tiny_bert.model, 0.5)
    shapes = linear_shapes(tiny_bert.model)
    for name, rank in ranks.items():
        out_f, in_f = shapes[name]
        assert rank * (out_f + in_f) <= 0.5 * out_f * in_f
        assert rank == fraction_rank(out_f, in_f, 0.5)
    assert resolve_ranks(tiny_bert.model, 1.0) == {}  # keeping everything means nothing is factorized


@pytest.mark.parametrize(
    "bad, match",
    [
        (0.0, r"\(0, 1\]"),
        (1.5, r"\(0, 1\]"),
        ({"nope": 3}, "not compressible"),
        ({"bert.encoder.layer.0.attention.self.query": 0}, "at least 1"),
        ({"bert.encoder.layer.0.attention.self.query": 32}, "break-even"),
        ({"bert.encoder.layer.0.attention.self.query": 65}, "exceeds"),
        ("half", "dict"),
    ],
)
def test_bad_ranks_raise(tiny_bert, bad, match):
    with pytest.raises(ValueError, match=match):
        resolve_ranks(tiny_bert.model, bad)


def test_compress_returns_new_model_and_leaves_input(tiny_bert):
    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    small = compress(tiny_bert, 0.5)
    assert all(torch.equal(before[k], v) for k, v in tiny_bert.model.state_dict().items())
    layers = [m for m in small.model.modules() if isinstance(m, LowRankLinear)]
    assert len(layers) == 12
    assert small.model.lowrank_info.method == "svd"
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in tiny_bert.model.parameters())


def test_near_full_rank_compression_reproduces_outputs(tiny_bert):
    # rank = max useful rank keeps most of the spectrum: outputs stay close
    small = compress(tiny_bert, 0.99)
    assert torch.allclose(logits(small), logits(tiny_bert), atol=0.05)


def test_dict_ranks_compress_only_named_layers(tiny_bert):
    name = "bert.encoder.layer.1.intermediate.dense"
    small = compress(tiny_bert, {name: 8})
    assert isinstance(small.model.get_submodule(name), LowRankLinear)
    assert small.model.get_submodule(name).rank == 8
    assert len(compressible_linears(small.model)) == 11


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_llama"])
def test_save_load_round_trip_reproduces_logits(request, tmp_path, model_fixture):
    loaded = request.getfixturevalue(model_fixture)
    small = compress(loaded, 0.3)
    save_compressed(small, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "lowrank.json").read_text())
    assert meta["method"] == "svd" and meta["ranks"] == small.model.lowrank_info.ranks
    again = load_compressed(tmp_path / "out")
    assert again.kind == loaded.kind
    assert (logits(again) - logits(small)).abs().max().item() <= 1e-5


def test_save_is_atomic(tiny_bert, tmp_path, monkeypatch):
    small = compress(tiny_bert, 0.3)
    target = tmp_path / "out"
    save_compressed(small, target)
    original = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sys.modules["lowrank.compress"], "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(compress(tiny_bert, 0.2), target)
    assert (target / "model.safetensors").read_bytes() == original  # old copy intact
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp leftovers


def test_save_requires_compressed_model(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="not produced by lowrank.compress"):
        save_compressed(tiny_bert, tmp_path / "x")


def test_compression_info_round_trips_through_its_json(tiny_llama, tmp_path):
    small = compress(tiny_llama, 0.3)
    info = small.model.lowrank_info
    assert load_info(save_compressed(small, tmp_path / "small")) == info
    assert load_compressed(tmp_path / "small").model.lowrank_info == info
    info.history["model.layers.0.mlp.up_proj"] = [2.0, 1.5, 1.25]
    info.options = {"solver": "als", "max_iters": 3}
    assert CompressionInfo.from_json(info.to_json()) == info
    assert "sequential" not in info.to_json()  # only a model compressed block by block records it
    streamed = replace(info, sequential={"statistics": "none", "examples": 0, "blocks": 2})
    assert CompressionInfo.from_json(json.loads(json.dumps(streamed.to_json()))) == streamed


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda meta: "{", "not readable JSON"),
        (lambda meta: "[1, 2]", "unsupported lowrank.json format None"),
        (lambda meta: json.dumps(meta | {"format_version": 2}), "unsupported lowrank.json format 2"),
        (lambda meta: json.dumps({k: v for k, v in meta.items() if k != "ranks"}), "needs 'base_model'"),
        (lambda meta: json.dumps(meta | {"ranks": {k: str(v) for k, v in meta["ranks"].items()}}), "an integer"),
        (lambda meta: json.dumps(meta | {"ranks": {k: True for k in meta["ranks"]}}), "an integer"),
        (lambda meta: json.dumps(meta | {"seconds": "fast"}), "'seconds' must be an object"),
        (lambda meta: json.dumps(meta | {"history": {"x": [1.0, "nan"]}}), "list of numbers"),
        (lambda meta: json.dumps(meta | {"method": 3}), "'method' must be a string"),
    ],
)
def test_a_tampered_lowrank_json_is_a_one_line_value_error(tiny_bert, tmp_path, tamper, match):
    folder = save_compressed(compress(tiny_bert, 0.3), tmp_path / "small")
    meta = json.loads((folder / "lowrank.json").read_text())
    (folder / "lowrank.json").write_text(tamper(meta))
    for read in (load_info, load_compressed):
        with pytest.raises(ValueError, match=match) as err:
            read(folder)
        assert "\n" not in str(err.value) and "lowrank.json" in str(err.value)
