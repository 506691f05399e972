"""Which ranks a model's layers get: per-layer shapes, a kept fraction turned into ranks, validation.

A layer ``W`` (out, in) at rank ``r`` costs ``r (out + in)`` parameters; a kept fraction
``f`` gives each layer a share of ``r* = f * out * in / (out + in)`` ranks, rounded down to a
multiple of ``align`` by :func:`lowrank.alignment.aligned_rank` (at least ``align``; dense when
``align`` is at/above break-even). Explicit ranks at or above break-even
(``r (out + in) >= out * in``) are refused; such layers stay dense.
"""

from __future__ import annotations

from torch import nn

from lowrank.alignment import DEFAULT_ALIGN, aligned_rank
from lowrank.layers import check_rank
from lowrank.loaded import module_of
from lowrank.models.architectures import compressible_linears

Ranks = dict[str, int] | float


class NoCompressibleLayers(ValueError):
    """The model has no layer this library can factorize."""


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """``{name: (out, in)}`` of every compressible dense Linear of a ``LoadedModel`` or module."""
    return {name: tuple(m.weight.shape) for name, m in compressible_linears(module_of(model)).items()}


def fraction_rank(out_features: int, in_features: int, fraction: float, align: int = DEFAULT_ALIGN) -> int | None:
    """Rank keeping ``fraction`` of a layer's parameters, aligned (:func:`lowrank.alignment.aligned_rank`), or
    ``None`` when the layer stays dense."""
    return aligned_rank(
        fraction * out_features * in_features / (out_features + in_features), out_features, in_features, align
    )


def resolve_ranks(model: nn.Module, ranks: Ranks, align: int = DEFAULT_ALIGN) -> dict[str, int]:
    """Validate ``ranks`` against the model and turn a fraction into per-layer ranks (multiples of ``align``).

    Raises ``ValueError`` for a model with no compressible layer, unknown layer names, a
    fraction outside (0, 1], or any rank that is < 1, above ``min(out, in)`` or at/above
    break-even.
    """
    shapes = linear_shapes(model)
    if not shapes:
        module = module_of(model)
        kind = getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__
        raise NoCompressibleLayers(f"this model ({kind}) has no compressible Linear layer: nothing to factorize")
    if isinstance(ranks, (int, float)) and not isinstance(ranks, bool):
        fraction = float(ranks)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a kept fraction must be in (0, 1], got {ranks}")
        if fraction == 1.0:
            return {}  # keep everything: the dense model
        resolved = {n: fraction_rank(o, i, fraction, align) for n, (o, i) in shapes.items()}
        return {n: r for n, r in resolved.items() if r is not None}
    if not isinstance(ranks, dict):
        raise ValueError(f"ranks must be a dict {{layer: rank}} or a float fraction, got {type(ranks).__name__}")
    unknown = sorted(set(ranks) - set(shapes))
    if unknown:
        raise ValueError(
            f"not compressible Linear layers of this model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    for name, rank in ranks.items():
        check_rank(rank, *shapes[name], name=name)
    return {n: int(r) for n, r in ranks.items()}
