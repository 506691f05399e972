"""A model with its tokenizer, and the one way to get the ``nn.Module`` out of whatever a caller passes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass
class LoadedModel:
    """A model ready to use: ``model`` (an ``nn.Module`` in eval mode), its ``tokenizer``,
    ``kind`` (``classifier``, ``causal-lm`` or ``encoder``), its ``name`` and the folder it came from."""

    model: nn.Module
    tokenizer: object
    kind: str  # "classifier" | "causal-lm" | "encoder"
    name: str
    path: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def with_model(self, model: nn.Module) -> LoadedModel:
        """The same tokenizer, kind and name around another module (e.g. its compressed copy)."""
        return replace(self, model=model)


def unwrap(model) -> tuple[nn.Module, LoadedModel | None]:
    """``(module, loaded)`` for a :class:`LoadedModel` (``loaded`` is it) or a bare ``nn.Module`` (``loaded`` is None).

    A bare Hugging Face model is used as it is, never replaced by an inner submodule, so
    layer names keep their full path (``model.layers.0...`` of a ``LlamaForCausalLM``).
    """
    if isinstance(model, LoadedModel):
        return model.model, model
    if isinstance(model, nn.Module):
        return model, None
    raise TypeError(f"expected a LoadedModel or an nn.Module, got {type(model).__name__}")


def module_of(model) -> nn.Module:
    """The ``nn.Module`` of a :class:`LoadedModel` or of a bare module."""
    return unwrap(model)[0]
