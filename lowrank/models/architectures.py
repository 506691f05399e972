"""The one place that knows which ``nn.Linear`` modules of each architecture are compressible.

An :class:`Architecture` names the Linear modules inside a Transformer block by the
suffix of their module path, and gives each a short *type* label (``query``,
``ffn_up``...) used to group layers in tables and heatmaps. Everything else in the
library is generic over ``nn.Linear``. Embeddings, poolers and classifier / LM heads
are never listed, so they stay dense by default.

Unknown architectures fall back to every ``nn.Linear`` inside the model except
heads (``classifier``, ``score``, ``lm_head``, ``pooler``); their type is the last
path component.

Weights that are not stored as ``nn.Linear`` are converted at the edge by the row's
``layout`` hook, so the rest of the library only ever sees ``nn.Linear``: GPT-2 keeps its
projections as ``Conv1D`` with a transposed (in, out) weight, which :func:`conv1d_to_linear`
turns into an equivalent ``nn.Linear`` (as nanoGPT's ``from_pretrained`` transposes them).
:func:`compressible_linears` applies the hook (in place, idempotent, exact).

Adding an architecture is one :class:`Architecture` row in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

HEAD_NAMES = ("classifier", "score", "lm_head", "pooler", "qa_outputs", "cls")


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    # module-path suffix -> type label
    linears: tuple[tuple[str, str], ...]
    # converts the model's projection modules to nn.Linear in place (None: they already are)
    layout: Callable[[nn.Module], None] | None = None

    def layer_type(self, module_name: str) -> str | None:
        for suffix, label in self.linears:
            if module_name.endswith(suffix):
                return label
        return None


BERT = Architecture(
    "bert",
    ("bert", "roberta", "xlm-roberta", "electra", "camembert"),
    (
        ("attention.self.query", "query"),
        ("attention.self.key", "key"),
        ("attention.self.value", "value"),
        ("attention.output.dense", "attn_out"),
        ("intermediate.dense", "ffn_up"),
        ("output.dense", "ffn_down"),
    ),
)

LLAMA = Architecture(
    "llama",
    ("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    (
        ("self_attn.q_proj", "q_proj"),
        ("self_attn.k_proj", "k_proj"),
        ("self_attn.v_proj", "v_proj"),
        ("self_attn.o_proj", "o_proj"),
        ("mlp.gate_proj", "gate_proj"),
        ("mlp.up_proj", "up_proj"),
        ("mlp.down_proj", "down_proj"),
    ),
)


def conv1d_to_linear(model: nn.Module) -> None:
    """Replace every ``Conv1D`` (``y = x W + b`` with ``W`` (in, out)) by the equivalent ``nn.Linear``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
            linear = nn.Linear(in_features, out_features, device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)


GPT2 = Architecture(
    "gpt2",
    ("gpt2",),
    (
        ("attn.c_attn", "qkv"),
        ("attn.c_proj", "attn_out"),
        ("mlp.c_fc", "ffn_up"),
        ("mlp.c_proj", "ffn_down"),
    ),
    layout=conv1d_to_linear,
)

ARCHITECTURES = (BERT, LLAMA, GPT2)


def architecture_of(model: nn.Module) -> Architecture | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    return None


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def is_compressible(model: nn.Module, name: str, module: nn.Module) -> bool:
    if not isinstance(module, nn.Linear) or _is_head(name):
        return False
    arch = architecture_of(model)
    return arch is None or arch.layer_type(name) is not None


def adapt_layout(model: nn.Module) -> nn.Module:
    """Apply the architecture's layout hook (e.g. GPT-2 ``Conv1D`` -> ``nn.Linear``) in place; returns ``model``."""
    arch = architecture_of(model)
    if arch is not None and arch.layout is not None:
        arch.layout(model)
    return model


def compressible_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{module_name: nn.Linear}`` for every compressible dense Linear, in module order
    (after :func:`adapt_layout`)."""
    adapt_layout(model)
    return {name: m for name, m in model.named_modules() if is_compressible(model, name, m)}


def compressible_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module_name: weight}`` (out, in) of every compressible Linear (:func:`compressible_linears`)."""
    return {name: module.weight for name, module in compressible_linears(model).items()}


def layer_type(model: nn.Module, name: str) -> str:
    """Short type label (``query``, ``ffn_up``, ``q_proj``...) of a compressible module."""
    arch = architecture_of(model)
    label = arch.layer_type(name) if arch else None
    return label or name.rsplit(".", 1)[-1]


def block_index(name: str) -> int:
    """Index of the Transformer block containing ``name`` (the first integer in its path), -1 if none."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return int(match.group(1)) if match else -1
