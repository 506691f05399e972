"""Which ``nn.Linear`` modules of a model are compressible, read from its architecture family.

A model's family is the one registered for its ``config.model_type`` (:mod:`lowrank.models.families`,
one module per family). The family's table names the compressible Linears of a block by module-path
suffix and gives each a type label (``query``, ``ffn_up``...) that groups layers in tables and
heatmaps; its layout hook first turns projections stored another way into ``nn.Linear`` with weight
(out, in) (GPT-2's ``Conv1D``, weight (in, out)), in place, idempotent, exact. The rest of the
library is generic over ``nn.Linear``; embeddings, poolers and heads stay dense.

A model of no registered family: every ``nn.Linear`` except heads (:data:`HEAD_NAMES`), typed by the
last path component. A causal LM's family may give the :class:`~lowrank.models.decoders.DecoderLayout`
that runs it one block at a time. Cost: one pass over ``named_modules``, a suffix match per module.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lowrank.models.decoders import DecoderLayout
from lowrank.models.families import FAMILIES, Family, family_of

HEAD_NAMES = ("classifier", "score", "lm_head", "pooler", "qa_outputs", "cls")


def architecture_of(model: nn.Module) -> Family | None:
    """The registered family of ``model`` (by ``model.config.model_type``), or None."""
    return family_of(getattr(getattr(model, "config", None), "model_type", None))


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def is_compressible(model: nn.Module, name: str, module: nn.Module) -> bool:
    if not isinstance(module, nn.Linear) or _is_head(name):
        return False
    arch = architecture_of(model)
    return arch is None or arch.layer_type(name) is not None


def adapt_layout(model: nn.Module) -> nn.Module:
    """Apply the family's layout hook (e.g. GPT-2 ``Conv1D`` -> ``nn.Linear``) in place; returns ``model``."""
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


def decoder_layout(config) -> DecoderLayout | None:
    """The decoder layout of a causal LM's ``config`` (``model_type``), or None for a family without one."""
    family = family_of(getattr(config, "model_type", None))
    return family.decoder if family else None


def block_layout(kind: str, config) -> DecoderLayout | None:
    """The layout through which a model of ``kind`` (:func:`lowrank.models.loading.model_kind`) and ``config`` runs
    one decoder block at a time: a causal LM's :func:`decoder_layout`; None for any other model."""
    return decoder_layout(config) if kind == "causal-lm" else None


def supported_types() -> list[str]:
    """The model types that run one decoder block at a time (a family with a decoder layout)."""
    return sorted(t for family in FAMILIES.values() if family.decoder for t in family.model_types)
