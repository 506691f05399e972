"""One row per architecture: GPT-2 (Conv1D at the edge), Qwen2, and models with nothing to compress."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lowrank import LowRankLinear, compress, compressible_linears, load_compressed, load_model, save_compressed
from lowrank.models.architectures import layer_type
from lowrank.models.families.gpt2 import conv1d_to_linear
from lowrank.ranks import NoCompressibleLayers, resolve_ranks


def logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


def test_conv1d_becomes_an_equivalent_linear():
    torch.manual_seed(0)
    conv = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs
    nn.init.normal_(conv.bias)
    holder = nn.Sequential(conv)
    x = torch.randn(4, 3)
    expected = holder(x)
    conv1d_to_linear(holder)
    assert isinstance(holder[0], nn.Linear) and holder[0].weight.shape == (5, 3)
    assert torch.allclose(holder(x), expected, atol=1e-6)


def test_gpt2_projections_are_compressed_and_round_trip(tiny_gpt2_dir, tmp_path):
    loaded = load_model(str(tiny_gpt2_dir))
    names = list(compressible_linears(loaded.model))
    assert len(names) == 8 and {layer_type(loaded.model, n) for n in names} == {"qkv", "attn_out", "ffn_up", "ffn_down"}
    ids = torch.randint(5, 200, (2, 12))
    small = compress(loaded, 0.5, method="svd")
    assert len(small.model.lowrank_info.ranks) == 8
    assert all(isinstance(small.model.get_submodule(n), LowRankLinear) for n in names)
    again = load_compressed(save_compressed(small, tmp_path / "gpt2-50"))
    assert torch.allclose(logits(again, ids), logits(small, ids), atol=1e-5)


def test_gpt2_built_from_a_config_is_adapted_by_compress(tiny_gpt2_dir):
    from transformers import GPT2LMHeadModel

    bare = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)  # Conv1D projections, never seen by load_model
    ids = torch.randint(5, 200, (1, 10))
    with torch.no_grad():
        dense = bare(input_ids=ids).logits
    small = compress(bare, 1.0)  # kept fraction 1: the dense model through the layout hook
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).logits, dense, atol=1e-5)
    assert len(resolve_ranks(bare, 0.5)) == 8


def test_qwen2_compresses_every_projection(tiny_qwen2_dir, tmp_path):
    loaded = load_model(str(tiny_qwen2_dir))
    assert len(compressible_linears(loaded.model)) == 14
    small = compress(loaded, 0.5)
    ids = torch.randint(5, 200, (2, 9))
    again = load_compressed(save_compressed(small, tmp_path / "qwen2-50"))
    assert torch.allclose(logits(again, ids), logits(small, ids), atol=1e-5)


def test_a_model_with_no_compressible_layer_is_an_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(NoCompressibleLayers, match="no compressible Linear layer"):
        compress(model, 0.5)
    with pytest.raises(ValueError, match="nothing to factorize"):
        resolve_ranks(model, {"0": 2})


def test_bare_llama_keeps_full_layer_names(tiny_llama_dir):
    from transformers import LlamaForCausalLM

    bare = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    assert all(n.startswith("model.layers.") for n in resolve_ranks(bare, 0.5))
