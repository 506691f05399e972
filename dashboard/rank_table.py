"""The Ranks page's editable table (pure functions; no Streamlit): a rank plan as rows, and typed ranks read back.

:func:`plan_frame` gives one row per layer: the rank as text (every typed value is checked, never coerced),
the kept parameters ``r (out + in)`` against ``out in``, the break-even rank, the predicted loss increase at
the rank (from the Fisher loss curves, when known) and the last message about the row. :func:`read_edits`
reads the cells typed into the editor (:func:`read_rank` each): a rank from 1 to ``min(out, in)`` is kept,
one at or above break-even keeps the layer dense with a note, anything else is refused with the reason.
Cost: one pass over the layers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from lowrank.allocation import RankPlan
from lowrank.layers import break_even_rank

# The table's columns, in order; "name" keys the rows and is not shown.
COLUMNS = (
    "name",
    "layer",
    "block",
    "type",
    "shape",
    "rank",
    "message",
    "break_even",
    "params",
    "kept",
    "predicted_loss",
    "dense",
    "why",
)
_INTEGER = re.compile(r"^[+-]?\d+$")


class RankCellError(ValueError):
    """A typed rank that cannot be used (the cell is refused and reverted)."""


def read_rank(value, out_features: int, in_features: int) -> tuple[int | None, str | None]:
    """A rank typed into the plan table: ``(rank, note)``; ``rank`` ``None`` keeps the layer dense.

    Empty keeps the layer dense; a rank at or above break-even is kept dense with a ``note``. Text, a
    fraction, zero or a negative number and a rank above ``min(out, in)`` raise :class:`RankCellError`
    (never coerced)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    text = str(value).strip()
    if not text:
        return None, None
    largest = min(out_features, in_features)
    if not _INTEGER.match(text):
        try:
            number = float(text)
        except ValueError:
            raise RankCellError(
                f"{text!r} is not a number: type a whole number from 1 to {largest}, "
                "or clear the cell to keep the layer dense"
            ) from None
        if not math.isfinite(number) or number != int(number):
            raise RankCellError(f"{text} is not a whole number: a rank counts columns (1 to {largest})")
        text = str(int(number))
    rank = int(text)
    if rank < 1:
        raise RankCellError(f"rank {rank} is out of range 1..{largest}: clear the cell to keep the layer dense")
    if rank > largest:
        raise RankCellError(f"rank {rank} is out of range 1..{largest} for a {out_features}×{in_features} weight")
    even = break_even_rank(out_features, in_features)
    if rank >= even:
        return None, f"rank {rank} is at or above break-even ({even}): kept dense"
    return rank, None


@dataclass(frozen=True)
class Edits:
    """What the typed cells of one editor run ask for (:func:`read_edits`)."""

    edited: tuple[str, ...]  # the layers whose rank cell was typed into
    changes: dict[str, int | None]  # {layer: new rank} (None: dense) where it differs from the plan
    refused: dict[str, str]  # {layer: why the typed value is refused}
    notes: dict[str, str]  # {layer: why the typed rank was changed (kept dense at break-even)}

    @property
    def messages(self) -> dict[str, str]:
        """The message column's text per layer: ``"refused: ..."`` or ``"note: ..."``."""
        return {
            **{n: f"refused: {m}" for n, m in self.refused.items()},
            **{n: f"note: {m}" for n, m in self.notes.items()},
        }


def read_edits(plan: RankPlan, editor_state: Mapping | None, shapes: Mapping[str, tuple[int, int]]) -> Edits:
    """The rank cells typed into the editor of ``plan``'s table (``editor_state``: the data editor's state, whose
    ``"edited_rows"`` are ``{row: {column: value}}`` in the table's row order), each read by :func:`read_rank`
    against the layer's ``(out, in)`` in ``shapes``."""
    names = [layer.name for layer in plan.layers]
    typed = {
        names[int(row)]: edit["rank"]
        for row, edit in (editor_state or {}).get("edited_rows", {}).items()
        if "rank" in edit
    }
    changes, refused, notes = {}, {}, {}
    for name, value in typed.items():
        try:
            rank, note = read_rank(value, *shapes[name])
        except RankCellError as err:
            refused[name] = str(err)
            continue
        if note:
            notes[name] = note
        if rank != plan.layer(name).rank:
            changes[name] = rank
    return Edits(tuple(typed), changes, refused, notes)


def plan_frame(
    plan: RankPlan,
    layers: pd.DataFrame,
    curves: Mapping | None,
    messages: Mapping[str, str],
    reasons: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The table of ``plan`` (:data:`COLUMNS`): ``layers`` gives each layer's type, block and break-even rank
    (``dashboard.cache.layer_table``), ``curves`` the predicted loss increase at every rank per layer (``None``:
    unknown, NaN), ``messages`` the message of a row (:attr:`Edits.messages`), ``reasons`` why it has its rank
    (:func:`lowrank.allocation.explain_plan`; empty when not given)."""
    frame = plan.to_frame().merge(layers[["name", "type", "block", "break_even"]], on="name")
    frame["kept"] = frame["params"] / frame["dense_params"]
    frame["predicted_loss"] = [
        (0.0 if pd.isna(r) else float(curves[n][int(r)])) if curves is not None else math.nan
        for n, r in zip(frame["name"], frame["rank"])
    ]
    frame["shape"] = [f"{o}×{i}" for o, i in zip(frame["out"], frame["in"])]
    frame["layer"] = [re.sub(r"^.*?\.\d+\.", "", n) for n in frame["name"]]  # without the block prefix
    frame["rank"] = ["" if pd.isna(r) else str(int(r)) for r in frame["rank"]]  # text: every typed value is checked
    frame["message"] = [messages.get(n, "") for n in frame["name"]]
    frame["why"] = [(reasons or {}).get(n, "") for n in frame["name"]]
    return frame[list(COLUMNS)]


def shown_columns(frame: pd.DataFrame, predicted: bool, messages: bool) -> list[str]:
    """The columns of ``frame`` the editor shows: not ``name``, the predicted loss only when ``predicted``, the
    message column only when some row has a message."""
    hidden = {"name"} | ({"predicted_loss"} if not predicted else set()) | ({"message"} if not messages else set())
    return [c for c in frame.columns if c not in hidden]
