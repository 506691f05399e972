"""What each layer may become, and what the whole plan may cost.

The budget counts the weights of the compressible Linear layers (biases are never
factorized): a layer ``W`` (out, in) at rank ``r`` costs ``r * (out + in)``, a dense layer
``out * in``. A layer's choices are the ranks ``align, 2 align, ...`` below break-even
(``r * (out + in) < out * in``), then staying dense; their costs strictly increase.

A budget is a fraction ``f`` in (0, 1] of the dense compressible parameters (resolved to
``floor(f * dense)``) or an absolute parameter count; it must be at least the smallest
plan, every layer at its smallest aligned rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowrank.alignment import aligned_choices, check_align

Budget = float | int


@dataclass(frozen=True)
class LayerChoices:
    """The choices of one layer: ``ranks`` (multiples of ``align`` below break-even), then dense.

    Choice ``k < len(ranks)`` is rank ``ranks[k]``; choice ``len(ranks)`` is the dense layer.
    Costs strictly increase with ``k``.
    """

    name: str
    out_features: int
    in_features: int
    ranks: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ranks) + 1

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    def rank(self, choice: int) -> int | None:
        return self.ranks[choice] if choice < len(self.ranks) else None

    def costs(self) -> np.ndarray:
        width = self.out_features + self.in_features
        return np.array([r * width for r in self.ranks] + [self.dense_params], dtype=np.int64)

    def choice_of(self, rank: int | None) -> int:
        return len(self.ranks) if rank is None else self.ranks.index(rank)


def layer_choices(shapes: dict[str, tuple[int, int]], align: int) -> dict[str, LayerChoices]:
    """``{name: LayerChoices}`` for ``{name: (out, in)}`` with ranks rounded to multiples of ``align``."""
    align = check_align(align)
    return {n: LayerChoices(n, o, i, aligned_choices(o, i, align)) for n, (o, i) in shapes.items()}


def resolve_budget(budget: Budget, layers: dict[str, LayerChoices]) -> int:
    """Absolute parameter budget from a fraction (float in (0, 1]) or a count (int); checks it is achievable."""
    dense = sum(c.dense_params for c in layers.values())
    smallest = sum(int(c.costs()[0]) for c in layers.values())
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget must be a fraction in (0, 1] (float) or a parameter count (int), got {budget!r}")
    if isinstance(budget, (float, np.floating)):
        if not math.isfinite(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(
                f"a budget fraction must be in (0, 1], got {budget}; pass an int for an absolute parameter count"
            )
        count = int(math.floor(float(budget) * dense))
    else:
        count = int(budget)
        if count <= 1:
            raise ValueError(
                f"a budget parameter count must be > 1, got {count}; pass a float in (0, 1] for a fraction"
            )
        if count > dense:
            raise ValueError(
                f"budget of {count:,} parameters exceeds the {dense:,} parameters of the dense compressible layers"
            )
    if count < smallest:
        raise ValueError(
            f"budget of {count:,} parameters ({count / dense:.1%}) is below the smallest possible plan, "
            f"{smallest:,} parameters ({smallest / dense:.1%}: every layer at its smallest aligned rank); "
            "raise the budget or lower align"
        )
    return count


def parse_budget(text: str) -> Budget:
    """``"0.5"`` or ``"50%"`` -> fraction 0.5; ``"4000000"`` -> count 4,000,000 (for the command line)."""
    value = str(text).strip()
    try:
        if value.endswith("%"):
            return float(value[:-1]) / 100.0
        if value.isdigit():
            return int(value)
        return float(value)
    except ValueError as err:
        raise ValueError(
            f"budget must be a fraction (0.5), a percentage (50%) or a parameter count (4000000), got {text!r}"
        ) from err
