"""Aligned ranks: the one rule every path that turns a budget into ranks follows.

Matrix kernels run whole tiles; a rank that is a multiple of ``align`` fills them (measured in
``docs/results/speed.md``). A layer ``W`` (out, in) may take the ranks ``align, 2 align, ...`` below
break-even (``r (out + in) < out in``); a budget share of ``r*`` ranks becomes

    r = align * floor(r* / align)                  (round down: never above the budget)
    r = align          when r* < align             (the smallest factorized form)
    dense              when align is at/above break-even (no aligned rank saves parameters)

so a plan stays within its budget except where a layer's share is below one aligned step.
``align = 1`` is the unaligned rank.
"""

from __future__ import annotations

import numpy as np

from lowrank.layers import max_useful_rank

DEFAULT_ALIGN = 8


def check_align(align) -> int:
    """``align`` as an int; ``ValueError`` unless it is a whole number >= 1."""
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 1:
        raise ValueError(f"align must be a positive integer, got {align!r}")
    return int(align)


def aligned_choices(out_features: int, in_features: int, align: int) -> tuple[int, ...]:
    """The ranks a layer may take: multiples of ``align`` below break-even (empty when none is)."""
    return tuple(range(align, max_useful_rank(out_features, in_features) + 1, align))


def aligned_rank(share: float, out_features: int, in_features: int, align: int) -> int | None:
    """The rank of a layer given a budget share of ``share`` ranks, by the rule above (``None``: dense)."""
    align = check_align(align)
    if align > max_useful_rank(out_features, in_features):
        return None
    return max(align, int(share // align) * align)
