"""Which ``nn.Linear`` modules of a model are compressible, read from its architecture family.

A model's family is the one registered for its ``config.model_type`` (:mod:`lowrank.models.families`,
one module per family). The family's table names the compressible Linears of a block by module-path
suffix and gives each a type label (``query``, ``ffn_up``...) that groups layers in tables and
heatmaps; its layout hook first turns projections stored another way into ``nn.Linear`` with weight
(out, in) (GPT-2's ``Conv1D``, weight (in, out)), in place, idempotent, exact. The rest of the
library is generic over ``nn.Linear``; embeddings, poolers and heads stay dense.

A model of no registered family: every ``nn.Linear`` except heads (:data:`HEAD_NAMES`), typed by the
last path component. A family may give the :class:`~lowrank.models.decoders.DecoderLayout` that runs its
causal LM one block at a time and the :class:`~lowrank.models.encoders.EncoderLayout` that runs its sequence
classifier so. Cost: one pass over ``named_modules``, a suffix match per module.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from lowrank.models.decoders import DecoderLayout
from lowrank.models.encoders import EncoderLayout
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


def encoder_layout(config) -> EncoderLayout | None:
    """The encoder layout of a sequence classifier's ``config``, its ``base`` the ``base_model_prefix`` of the
    ``*ForSequenceClassification`` class transformers builds for it; None for a family without one."""
    family = family_of(getattr(config, "model_type", None))
    if family is None or family.encoder is None:
        return None
    return replace(family.encoder, base=MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)].base_model_prefix)


def block_layout(kind: str, config) -> DecoderLayout | EncoderLayout | None:
    """The layout through which a model of ``kind`` (:func:`lowrank.models.loading.model_kind`) and ``config`` runs
    one block at a time: a causal LM's :func:`decoder_layout`, a classifier's :func:`encoder_layout`; None for any
    other model."""
    if kind == "causal-lm":
        return decoder_layout(config)
    return encoder_layout(config) if kind == "classifier" else None


def supported_types(kind: str = "causal-lm") -> list[str]:
    """The model types whose models of ``kind`` run one block at a time: a family with a decoder layout (causal
    LMs) or an encoder layout (classifiers)."""
    field = "decoder" if kind == "causal-lm" else "encoder"
    return sorted(t for family in FAMILIES.values() if getattr(family, field) for t in family.model_types)
