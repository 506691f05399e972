"""The one reader and validator of plan files (lowrank.allocation.plan)."""

import json
import math

import pytest

from lowrank.allocation import PlannedLayer, RankPlan, read_ranks


def plan_dict(**changes):
    data = {
        "format": "lowrank-plan",
        "version": 1,
        "strategy": "x",
        "budget": 1000,
        "align": 2,
        "ranks": {"a": 6},
        "layers": [{"name": "a", "out": 16, "in": 16, "rank": 6}, {"name": "b", "out": 8, "in": 4, "rank": None}],
    }
    return data | changes


def write(path, text):
    path.write_text(text)
    return path


def one_line_naming(err, path):
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("reader", [read_ranks, RankPlan.load])
def test_plan_file_errors_name_the_file(tmp_path, reader):
    missing = tmp_path / "no-such-plan.json"
    with pytest.raises(ValueError, match="plan file not found") as err:
        reader(missing)
    one_line_naming(err, missing)
    with pytest.raises(ValueError, match="is a folder") as err:
        reader(tmp_path)
    one_line_naming(err, tmp_path)
    bad = write(tmp_path / "bad.json", "{nope")
    with pytest.raises(ValueError, match="is not valid JSON") as err:
        reader(bad)
    one_line_naming(err, bad)


@pytest.mark.parametrize("text", ["[1, 2]", '{"layers": []}', '{"ranks": [4, 8]}', '"ranks"'])
def test_read_ranks_needs_a_ranks_object(tmp_path, text):
    path = write(tmp_path / "plan.json", text)
    with pytest.raises(ValueError, match="'ranks' mapping") as err:
        read_ranks(path)
    one_line_naming(err, path)


def test_read_ranks_of_a_bare_mapping_and_of_a_saved_plan(tmp_path):
    assert read_ranks(write(tmp_path / "bare.json", '{"ranks": {"a": 4, "b": 8.0}}')) == {"a": 4, "b": 8}
    for rank in (0, -4, 2.5, True, "4"):
        path = write(tmp_path / "bad-rank.json", json.dumps({"ranks": {"a": rank}}))
        with pytest.raises(ValueError, match="the rank of a must be a whole number >= 1") as err:
            read_ranks(path)
        one_line_naming(err, path)
    plan = RankPlan.from_json(plan_dict())
    path = plan.save(tmp_path / "plan.json")
    assert read_ranks(path) == plan.ranks == {"a": 6}
    assert RankPlan.load(path).to_dict() == plan.to_dict()
    # a saved plan is checked whole: its ranks object must agree with its layers
    path = write(tmp_path / "edited.json", json.dumps(plan_dict(ranks={"a": 4})))
    with pytest.raises(ValueError, match="disagrees") as err:
        read_ranks(path)
    one_line_naming(err, path)


@pytest.mark.parametrize("budget", [0.5, 1e-9, 999.5, float("nan"), float("inf")])
def test_a_fractional_budget_is_refused_not_truncated(budget):
    with pytest.raises(
        ValueError, match=r"malformed rank plan: the budget \(a parameter count\) must be a whole number"
    ):
        RankPlan.from_json(plan_dict(budget=budget))
    with pytest.raises(ValueError, match="budget .* must be a whole number"):
        RankPlan([PlannedLayer("a", 16, 16, 4)], budget, "x")
    assert RankPlan.from_json(plan_dict(budget=1000.0)).budget == 1000  # a whole float loses nothing


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"budget": -10}, "budget .* >= 1, got -10"),
        ({"budget": 0}, "budget .* >= 1, got 0"),
        ({"budget": "1000"}, "budget .* got '1000'"),
        ({"align": 0}, "align must be a whole number >= 1, got 0"),
        ({"align": -8}, "align must be a whole number >= 1"),
        ({"align": 2.5}, "align must be a whole number >= 1"),
        ({"layers": [{"name": "a", "out": 16, "in": 16, "rank": 6.5}]}, "the rank of a must be a whole number"),
        ({"layers": [{"name": "a", "out": 16, "rank": 6}]}, "missing 'in'"),
        ({"ranks": [6]}, "'ranks' must be an object"),
    ],
)
def test_bad_plan_numbers_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        RankPlan.from_json(plan_dict(**changes))


def test_negative_budget_and_align_zero_refused_when_built_directly():
    layers = [PlannedLayer("a", 16, 16, 4)]
    with pytest.raises(ValueError, match="budget"):
        RankPlan(layers, -1, "x")
    with pytest.raises(ValueError, match="align"):
        RankPlan(layers, 100, "x", align=0)
    plan = RankPlan(layers, 100, "x", align=1)
    assert plan.budget == 100 and plan.align == 1 and math.isnan(plan.predicted_loss)


def test_check_layers_against_a_model():
    plan = RankPlan.from_json(plan_dict())
    plan.check_layers({"a": (16, 16), "b": (8, 4)})
    with pytest.raises(ValueError, match=r"do not match tiny \(1 of 2 layer names in common\)"):
        plan.check_layers({"a": (16, 16), "c": (8, 4)}, "tiny")
    with pytest.raises(ValueError, match="b is 8×4 in the plan but 4×8 in the model"):
        plan.check_layers({"a": (16, 16), "b": (4, 8)})
