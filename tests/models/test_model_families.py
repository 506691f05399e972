"""Architecture families: each model type keeps its paths, and a new family is one registered module."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, SmolLM3Config

from lowrank.models.architectures import (
    architecture_of,
    compressible_linears,
    decoder_layout,
    layer_type,
    supported_types,
)
from lowrank.models.decoders import DecoderLayout
from lowrank.models.families import FAMILIES, Family, family_of, register_family, unregister_family


class ProbeConfig(LlamaConfig):
    model_type = "probe-lm"


def probe_model() -> LlamaForCausalLM:
    """A 2-block causal LM of width 32 whose config says ``probe-lm``: no family knows it until the test adds one."""
    torch.manual_seed(0)
    config = ProbeConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def probe_family():
    """What a family module holds (its model type, Linear table, layout hook, decoder layout), registered for one
    test."""
    adapted = []
    family = Family(
        "probe",
        ("probe-lm",),
        (("self_attn.q_proj", "probe_query"), ("self_attn.o_proj", "probe_out")),
        layout=adapted.append,
        decoder=DecoderLayout(),
    )
    register_family(family)
    try:
        yield family, adapted
    finally:
        unregister_family("probe")


def test_every_model_type_keeps_the_paths_it_had():
    expected = {
        **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), "bert"),
        **dict.fromkeys(("llama", "qwen2", "qwen3"), "llama"),
        "mistral": "mistral",
        "smollm3": "smollm3",
        "gpt2": "gpt2",
    }
    assert {t: family_of(t).name for t in expected} == expected
    assert family_of("mistral").linears == family_of("smollm3").linears == family_of("llama").linears
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(supported_types())
    assert "smollm3" not in supported_types()  # compressed in memory only
    assert decoder_layout(LlamaConfig()) == DecoderLayout()
    assert decoder_layout(MistralConfig()) == DecoderLayout(sliding_from_config=True)
    assert decoder_layout(SmolLM3Config()) is None


def test_a_family_registered_from_one_definition_is_found_everywhere(probe_family):
    family, adapted = probe_family
    model = probe_model()
    assert architecture_of(model) is family and decoder_layout(model.config) is family.decoder
    assert "probe-lm" in supported_types()
    names = list(compressible_linears(model))
    assert adapted == [model]  # its layout hook ran
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "o_proj")]
    assert {layer_type(model, n) for n in names} == {"probe_query", "probe_out"}

    layout, ids = decoder_layout(model.config), torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        hidden = layout.embed_tokens(model, ids)
        context = layout.context(model, hidden, None)
        for index in range(layout.num_blocks(model)):
            hidden = layout.run_block(model, index, hidden, context)
        assert torch.allclose(layout.logits(model, hidden), model(input_ids=ids, use_cache=False).logits, atol=1e-5)


def test_an_unregistered_family_falls_back_to_every_linear_but_heads(probe_family):
    family, _ = probe_family
    unregister_family(family.name)
    try:
        model = probe_model()
        assert architecture_of(model) is None and decoder_layout(model.config) is None
        assert "probe-lm" not in supported_types()
        names = list(compressible_linears(model))
        assert len(names) == 14 and "lm_head" not in names
        assert layer_type(model, names[0]) == "q_proj"  # the last path component
    finally:
        register_family(family)


def test_a_model_type_belongs_to_one_family():
    with pytest.raises(ValueError, match=r"'llama' \(llama\)"):
        register_family(Family("copy", ("probe-other", "llama"), ()))
    assert "copy" not in FAMILIES and family_of("probe-other") is None
