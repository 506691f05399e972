"""The one place that knows which ``nn.Linear`` modules of each architecture are compressible.

An :class:`Architecture` names the Linear modules inside a Transformer block by the
suffix of their module path, and gives each a short *type* label (``query``,
``ffn_up``...) used to group layers in tables and heatmaps. Everything else in the
library is generic over ``nn.Linear``. Embeddings, poolers and classifier / LM heads
are never listed, so they stay dense by default.

Unknown architectures fall back to every ``nn.Linear`` inside the model except
heads (``classifier``, ``score``, ``lm_head``, ``pooler``); their type is the last
path component.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

HEAD_NAMES = ("classifier", "score", "lm_head", "pooler", "qa_outputs", "cls")


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    # module-path suffix -> type label
    linears: tuple[tuple[str, str], ...]

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

ARCHITECTURES = (BERT, LLAMA)


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


def compressible_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{module_name: nn.Linear}`` for every compressible dense Linear, in module order."""
    return {name: m for name, m in model.named_modules() if is_compressible(model, name, m)}


def layer_type(model: nn.Module, name: str) -> str:
    """Short type label (``query``, ``ffn_up``, ``q_proj``...) of a compressible module."""
    arch = architecture_of(model)
    label = arch.layer_type(name) if arch else None
    return label or name.rsplit(".", 1)[-1]


def block_index(name: str) -> int:
    """Index of the Transformer block containing ``name`` (the first integer in its path), -1 if none."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return int(match.group(1)) if match else -1
