"""What the dashboard's results rest on: which task a model is measured on, when a result destroys the model,
bounded latency measurements with their conditions (re-measured when they change), and a Factorize run as a
one-budget sweep with explicit ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank.evaluation import evaluate
from lowrank.evaluation.latency import conditions_differ, latency_note, measure_latency, measurement_conditions
from lowrank.evaluation.quality import chance_accuracy, check_task_fits, destroyed
from lowrank.experiments.run import dense_reference, execute_run
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import SweepSpec, run_sweep


def test_a_causal_lm_is_refused_a_classification_task_in_words_and_no_row_is_written(
    tiny_llama, sentiment_csv, tmp_path
):
    check_task_fits("m", "causal-lm", "lm", "lee")
    check_task_fits("m", "encoder", "classification", "rotten_tomatoes")
    with pytest.raises(ValueError, match="causal language model, not a classifier: measure it by perplexity"):
        check_task_fits("smollm2-135m", "causal-lm", "classification", "rotten_tomatoes")
    with pytest.raises(ValueError, match="not a causal language model"):
        check_task_fits("minilm", "classifier", "lm", "lee")
    with pytest.raises(ValueError, match="not a classifier"):
        evaluate(tiny_llama, sentiment_csv)
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="causal language model"):
        execute_run(store, tiny_llama, sentiment_csv, str(sentiment_csv), "dense", {})
    assert store.runs().empty  # refused before recording: nothing failed in the store


def test_destroyed_results_are_perplexity_far_above_dense_or_accuracy_at_chance(sentiment_csv):
    assert destroyed("perplexity", 60_860.0, 32.5) and "10x" in destroyed("perplexity", 2.0e8, 32.5)
    assert destroyed("perplexity", None, 32.5)  # overflowed to infinity: stored as NULL
    assert destroyed("perplexity", 300.0, 32.5) is None
    assert chance_accuracy(sentiment_csv) == pytest.approx(0.5, abs=0.2)
    assert "at chance" in destroyed("accuracy", 0.51, 0.85, chance=0.5)
    assert destroyed("accuracy", 0.70, 0.85, chance=0.5) is None
    assert destroyed("accuracy", 0.50, 0.51, chance=0.5) is None  # the dense model is at chance itself
    assert destroyed("accuracy", 0.50, None, chance=0.5) is None


def test_latency_fits_a_time_budget_and_says_how_it_was_measured(tiny_bert, monkeypatch):
    texts = ["a good film", "a bad film"]
    quick = measure_latency(tiny_bert, texts, 2, max_length=16, repeats=3, budget_s=30.0)
    assert quick.warm_up and quick.repeats == 3 and quick.ms > 0
    once = measure_latency(
        tiny_bert, texts, 2, max_length=16, repeats=5, budget_s=1e-9
    )  # a pass longer than the budget
    assert once.repeats == 1 and not once.warm_up
    how = {
        "conditions": measurement_conditions(),
        "budget_s": 5.0,
        "b1": {"repeats": 5, "warm_up": True},
        "b32": {"repeats": 1, "warm_up": False},
    }
    assert "median of 5 passes" in latency_note(how, "b1") and "single pass" in latency_note(how, "b32")
    assert "thread" in latency_note(how)
    assert (
        latency_note(None) == latency_note(float("nan"), "b1") == latency_note({}) == ""
    )  # a stored run's missing value


def test_conditions_differ_on_threads_load_or_calibration():
    now = {"device": "cpu", "threads": 2, "cpus": 2, "load": 0.4, "calibration_ms": 10.0}
    assert conditions_differ(now, dict(now)) is None
    assert conditions_differ(None, now) == "no recorded measurement conditions"
    assert "threads" in conditions_differ({**now, "threads": 1}, now)
    assert "load average" in conditions_differ({**now, "load": 3.1}, now)
    assert "calibration" in conditions_differ({**now, "calibration_ms": 25.0}, now)


def test_a_dense_latency_measured_under_other_conditions_is_measured_again(tiny_bert, sentiment_csv, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    first = dense_reference(store, tiny_bert, sentiment_csv, str(sentiment_csv))
    assert first["latency_info"]["conditions"]["threads"] >= 1 and first["latency_info"]["b1"]["repeats"] >= 1
    assert dense_reference(store, tiny_bert, sentiment_csv, str(sentiment_csv))["id"] == first["id"]  # reused as is
    busy = {**first["latency_info"], "conditions": {**first["latency_info"]["conditions"], "load": 40.0}}
    store.update_run(first["id"], latency_info=busy, latency_ms_b1=1639.0)  # as if measured under heavy load
    assert (
        dense_reference(store, tiny_bert, sentiment_csv, str(sentiment_csv))["latency_ms_b1"] == 1639.0
    )  # not checked
    again = dense_reference(store, tiny_bert, sentiment_csv, str(sentiment_csv), check_latency=True)
    assert again["id"] == first["id"] and again["latency_ms_b1"] != 1639.0
    assert "load average" in again["latency_info"]["remeasured"]
    assert len(store.runs()) == 1


def test_a_sweep_with_explicit_ranks_runs_them_and_saves_the_models(tiny_bert_dir, sentiment_csv, tmp_path):
    from lowrank.info import load_info

    store = RunStore(tmp_path / "runs.sqlite")
    ranks = {"bert.encoder.layer.0.attention.self.query": 4, "bert.encoder.layer.1.output.dense": 7}
    spec = SweepSpec(
        model=str(tiny_bert_dir),
        task=str(sentiment_csv),
        methods=["svd"],
        budgets=[0.9],
        strategy="manual",
        ranks=ranks,
        save=True,
        label="factorize",
    )
    with pytest.raises(ValueError, match="one budget"):
        SweepSpec(**{**spec.to_dict(), "budgets": [0.3, 0.5]}).validate()
    with pytest.raises(ValueError, match="positive integer"):
        SweepSpec(**{**spec.to_dict(), "ranks": {"x": 2.5}}).validate()
    assert spec.needs() == ()  # the strategy is not run: only the methods' statistics
    sweep_id = store.create_sweep(spec.to_dict(), label=spec.label, runs_total=spec.runs_total)
    assert run_sweep(SweepSpec.from_dict(store.get_sweep(sweep_id)["spec"]), store, sweep_id) == {
        "done": 2,
        "failed": 0,
    }
    run = store.runs(sweep_id=sweep_id, method="svd").iloc[0]
    assert run["ranks"] == ranks and run["strategy"] == "manual" and run["budget"] == pytest.approx(0.9)
    assert load_info(run["output_dir"]).ranks == ranks
    dense = store.runs(sweep_id=sweep_id, method="dense").iloc[0]  # the card measures it beside the dense model
    card = (Path(run["output_dir"]) / "README.md").read_text()
    assert f"| accuracy | {run['value']:.4g} | {dense['value']:.4g} |" in card and "latency: " in card
