"""The Ranks page's table (dashboard.rank_table) without Streamlit: a plan as rows, typed ranks read back and
checked against each layer's shape, and which columns the editor shows."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard.rank_table import COLUMNS, RankCellError, plan_frame, read_edits, read_rank, shown_columns
from lowrank.allocation import PlannedLayer, RankPlan

ROOT = Path(__file__).resolve().parents[2]
QUERY0, DOWN0, QUERY1 = "encoder.layer.0.attention.self.query", "encoder.layer.0.output.dense", "encoder.layer.1.q"
SHAPES = {QUERY0: (64, 64), DOWN0: (64, 256), QUERY1: (64, 64)}  # break-even ranks 32, 52, 32


def plan() -> RankPlan:
    ranks = {QUERY0: 8, DOWN0: None, QUERY1: 4}
    return RankPlan([PlannedLayer(name, *SHAPES[name], ranks[name]) for name in SHAPES], budget=20_000, strategy="x")


@pytest.mark.parametrize(
    "typed, expected",
    [
        (None, (None, None)),
        (math.nan, (None, None)),
        ("  ", (None, None)),
        ("3", (3, None)),
        (" +3 ", (3, None)),
        ("3.0", (3, None)),
        (31, (31, None)),
    ],
)
def test_a_typed_rank_is_read_as_a_whole_number_or_empty(typed, expected):
    assert read_rank(typed, 64, 64) == expected


def test_a_rank_at_or_above_break_even_keeps_the_layer_dense_with_a_note():
    rank, note = read_rank("40", 64, 64)
    assert rank is None and note == "rank 40 is at or above break-even (32): kept dense"


@pytest.mark.parametrize(
    "typed, words",
    [
        ("abc", "not a number"),
        ("2.5", "not a whole number"),
        ("inf", "not a whole number"),
        ("0", "out of range 1..64"),
    ],
)
def test_a_typed_value_that_is_no_rank_is_refused_never_coerced(typed, words):
    with pytest.raises(RankCellError, match=words):
        read_rank(typed, 64, 256)
    with pytest.raises(RankCellError, match="out of range 1..64 for a 64×256 weight"):
        read_rank("65", 64, 256)


def test_edits_are_read_against_the_plan():
    p = plan()
    state = {"edited_rows": {"0": {"rank": "abc"}, 1: {"rank": "5"}, 2: {"rank": "40"}}}
    edits = read_edits(p, state, SHAPES)
    assert edits.edited == (QUERY0, DOWN0, QUERY1)
    assert edits.changes == {DOWN0: 5, QUERY1: None}  # the refused cell changes nothing
    assert set(edits.refused) == {QUERY0} and "not a number" in edits.refused[QUERY0]
    assert edits.notes == {QUERY1: "rank 40 is at or above break-even (32): kept dense"}
    assert edits.messages == {QUERY0: f"refused: {edits.refused[QUERY0]}", QUERY1: f"note: {edits.notes[QUERY1]}"}

    same = read_edits(p, {"edited_rows": {0: {"rank": "8"}, 2: {"other": 1}}}, SHAPES)
    assert same.edited == (QUERY0,) and same.changes == {} and same.messages == {}
    assert read_edits(p, None, SHAPES).edited == ()


def test_the_table_has_a_row_per_layer_with_its_rank_as_text():
    p = plan()
    layers = pd.DataFrame(
        {"name": list(SHAPES), "type": ["query", "down", "query"], "block": [0, 0, 1], "break_even": [32, 52, 32]}
    )
    curves = {name: np.linspace(1.0, 0.0, min(shape) + 1) for name, shape in SHAPES.items()}
    frame = plan_frame(p, layers, curves, {QUERY1: "note: kept dense"})
    assert tuple(frame.columns) == COLUMNS
    assert list(frame["rank"]) == ["8", "", "4"] and list(frame["dense"]) == [False, True, False]
    assert list(frame["layer"]) == ["attention.self.query", "output.dense", "q"]  # without the block prefix
    assert list(frame["shape"]) == ["64×64", "64×256", "64×64"]
    assert list(frame["kept"]) == pytest.approx([8 * 128 / 4096, 1.0, 4 * 128 / 4096])
    assert list(frame["predicted_loss"]) == pytest.approx([curves[QUERY0][8], 0.0, curves[QUERY1][4]])
    assert list(frame["message"]) == ["", "", "note: kept dense"]
    assert plan_frame(p, layers, None, {})["predicted_loss"].isna().all()

    assert shown_columns(frame, predicted=True, messages=True) == list(COLUMNS[1:])
    hidden = shown_columns(frame, predicted=False, messages=False)
    assert "name" not in hidden and "predicted_loss" not in hidden and "message" not in hidden and "rank" in hidden


def test_the_table_logic_runs_without_streamlit():
    code = "import sys, dashboard.rank_table; assert 'streamlit' not in sys.modules, 'streamlit imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
