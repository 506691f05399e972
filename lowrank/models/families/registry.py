"""The registry of architecture families and what one family declares.

A :class:`Family` covers a set of ``config.model_type`` values and gives ``linears``, the compressible
``nn.Linear`` modules of a block as (module-path suffix, type label) pairs, the first suffix that ends a module's
path naming it; ``layout``, a hook turning projections stored another way into ``nn.Linear`` with weight
(out, in), in place (None: they already are); ``decoder``, the
:class:`~lowrank.models.decoders.DecoderLayout` of a causal LM run one block at a time (None: no
layer-sequential mode); and ``encoder``, the :class:`~lowrank.models.encoders.EncoderLayout` of its sequence
classifier run one block at a time (its ``base`` filled in from the config by
:func:`lowrank.models.architectures.encoder_layout`; None: no block sweep on a classifier). A family is one
module of this package that calls :func:`register_family`; a model type belongs to at most one. Cost of a
lookup: O(registered model types).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lowrank.models.decoders import DecoderLayout
from lowrank.models.encoders import EncoderLayout


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # module-path suffix -> type label, first match wins
    linears: tuple[tuple[str, str], ...]
    # converts the model's projection modules to nn.Linear in place (None: they already are)
    layout: Callable[[nn.Module], None] | None = None
    # how to run the causal LM one decoder block at a time (None: not layer-sequential)
    decoder: DecoderLayout | None = None
    # how to run the family's sequence classifier one encoder block at a time (None: no block sweep)
    encoder: EncoderLayout | None = None

    def layer_type(self, module_name: str) -> str | None:
        for suffix, label in self.linears:
            if module_name.endswith(suffix):
                return label
        return None


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` (replacing one of the same name); a model type of another family is refused."""
    claimed = {t: f.name for f in FAMILIES.values() if f.name != family.name for t in f.model_types}
    taken = [f"{t!r} ({claimed[t]})" for t in family.model_types if t in claimed]
    if taken:
        raise ValueError(f"family {family.name!r}: model type(s) already registered: {', '.join(taken)}")
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove the family ``name`` and return it."""
    return FAMILIES.pop(name)


def family_of(model_type: str | None) -> Family | None:
    """The registered family that covers ``model_type``, or None."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)
