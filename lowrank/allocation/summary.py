"""A rank plan read by layer type and by depth: where a strategy spends the budget.

A layer's type is its name's last part (``q_proj``, ``down_proj``, ``attention.self.query``' ``query``); its depth
is the first whole-number part of its name (the block index, ``model.layers.7.mlp.up_proj`` -> 7; ``None`` for a
layer outside the blocks, e.g. a head). For each group: the layers, how many stay dense, the parameters kept and
their share of the group's dense parameters (``kept``). Cost: one pass over the plan's layers.
"""

from __future__ import annotations

import re

import pandas as pd

from lowrank.allocation.plan import RankPlan

GROUPS = ("type", "depth")
_DEPTH = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def layer_depth(name: str) -> int | None:
    match = _DEPTH.search(name)
    return int(match.group(1)) if match else None


def summarize_plan(plan: RankPlan, by: str = "type") -> pd.DataFrame:
    """One row per layer type (``by="type"``) or depth (``by="depth"``, in order): ``layers``, ``dense`` (layers
    left dense), ``params``, ``dense_params`` and ``kept = params / dense_params``."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}, got {by!r}")
    key = layer_type if by == "type" else layer_depth
    rows = [
        {by: key(layer.name), "dense": layer.dense, "params": layer.params, "dense_params": layer.dense_params}
        for layer in plan.layers
    ]
    frame = pd.DataFrame(rows, columns=[by, "dense", "params", "dense_params"])
    grouped = frame.groupby(by, sort=by == "depth", dropna=False).agg(
        layers=("params", "size"),
        dense=("dense", "sum"),
        params=("params", "sum"),
        dense_params=("dense_params", "sum"),
    )
    grouped["kept"] = grouped["params"] / grouped["dense_params"]
    return grouped.reset_index()
