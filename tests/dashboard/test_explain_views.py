"""The explaining views under AppTest: why each layer has its rank, predicted against measured, generations."""

from __future__ import annotations

import numpy as np
import pytest

from tests.dashboard import test_dashboard
from tests.dashboard.test_dashboard import (
    click,
    new_app,
    plotly_specs,
    plotted,
    visit,
    wait_for_job,
    wait_for_sweep,
)

env = test_dashboard.env  # the fixture: a temporary cache, the tiny BERT and a CSV task as the defaults

pytestmark = pytest.mark.usefixtures("env")


def test_ranks_page_shows_the_strategys_own_curve_with_the_plans_rank(tiny_bert_dir, sentiment_csv):
    import lowrank
    from lowrank.allocation import strategy_curves
    from lowrank.statistics import DEFAULT, statistics_for

    at = new_app().run()
    visit(at, "ranks")
    at.selectbox(key="ranks_strategy").set_value("kfac_greedy").run()
    click(at, "Fill ranks")
    plan = at.session_state["plan"]
    assert plan.strategy == "kfac_greedy"
    layer = next(layer for layer in plan.layers if layer.rank is not None)
    at.selectbox(key="why_layer").set_value(layer.name).run()
    assert not at.exception, [e.message for e in at.exception]
    figure = next(spec for spec in plotly_specs(at) if spec["data"][0].get("name") == "curve")
    traces = {trace["name"]: trace for trace in figure["data"]}

    loaded = lowrank.load_model(str(tiny_bert_dir), task=lowrank.load_task(str(sentiment_csv)))
    stats = statistics_for(loaded, str(sentiment_csv), ("activations", "gradients"), DEFAULT)
    expected = strategy_curves(loaded, "kfac_greedy", stats=stats)[layer.name]
    np.testing.assert_allclose(np.asarray(plotted(traces["curve"])), expected, rtol=1e-9)
    assert traces["plan's rank"]["x"] == [layer.rank]
    assert any(name.startswith("price:") for name in traces)
    price = next(m for m in at.metric if m.label == "Budget's price")
    assert price.value != "–"
    why = at.data_editor[0].value["why"]
    assert why.str.len().gt(0).all()


def test_uniform_is_shown_against_the_kfac_curves_it_ignores():
    at = new_app().run()
    visit(at, "ranks")
    assert at.session_state["plan"].strategy == "uniform"
    assert any("reads no per-rank curve" in c.value for c in at.caption)
    click(at, "Compute input activation statistics and output gradient statistics")
    figure = next(spec for spec in plotly_specs(at) if spec["data"][0].get("name") == "curve")
    assert "what uniform ignores" in figure["layout"]["title"]["text"]
    assert at.data_editor[0].value["why"].str.contains("the same kept fraction").all()


@pytest.fixture()
def llama_session(env, seed_lee, tiny_llama_dir, monkeypatch):
    """Sessions start on the tiny Llama measured on the Lee corpus (seeded into the test's cache)."""
    seed_lee(env)
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", "lee")
    monkeypatch.setenv("LOWRANK_DEMO_DECODER", str(tiny_llama_dir))
    return env


def generation_tables(at) -> list:
    return [frame.value for frame in at.dataframe if "prompt" in frame.value.columns]


def test_generations_appear_for_a_tiny_llama_on_factorize_and_summary(llama_session):
    from lowrank.compress import load_any
    from lowrank.experiments.store import RunStore
    from lowrank.generation import DEFAULT_PROMPTS, DEFAULT_TOKENS, generate

    store = RunStore(llama_session / "runs.sqlite")
    at = new_app().run()
    visit(at, "factorize")
    at.multiselect(key="factorize_methods").set_value(["svd"]).run()
    click(at, "Factorize and evaluate")
    assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
    at.run()
    click(at, "Generate side by side")
    (table,) = generation_tables(at)
    run = store.runs(method="svd").iloc[0]
    assert list(table.columns) == ["prompt", "dense", f"svd (run #{run['id']})"]
    assert list(table["prompt"]) == list(DEFAULT_PROMPTS)
    compressed = load_any(run["output_dir"])
    assert list(table[f"svd (run #{run['id']})"]) == [
        g.text for g in generate(compressed, DEFAULT_PROMPTS, DEFAULT_TOKENS)
    ]

    visit(at, "summary")
    click(at, "Generate side by side")
    (table,) = generation_tables(at)
    assert list(table.columns) == ["prompt", "dense", f"svd at {run['budget']:.0%}"]


def test_the_decoder_demo_runs_end_to_end_on_a_tiny_llama(llama_session):
    from lowrank.experiments.store import RunStore

    store = RunStore(llama_session / "runs.sqlite")
    at = new_app().run()
    click(at, "Run the decoder demo")
    demo = store.sweeps().iloc[0]
    assert demo["label"] == "demo-decoder" and demo["spec"]["save"]
    assert wait_for_sweep(store, int(demo["id"]))["status"] == "done"
    assert store.runs(status=["failed", "interrupted"]).empty
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    labels = {m.label for m in at.metric}
    assert {"dense perplexity", "kfac_svd at 80%", "kfac_svd at 60%"} <= labels
    (table,) = generation_tables(at)
    assert list(table.columns) == ["prompt", "dense", "kfac_svd at 80%", "kfac_svd at 60%"]


def scatter(at, title: str) -> dict:
    (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith(title)]
    return spec


def test_predicted_against_measured_scatters_print_the_rank_correlation(env, tiny_bert_dir, sentiment_csv):
    import re

    from lowrank.experiments.store import RunStore
    from lowrank.experiments.sweep import SweepSpec, start_sweep

    at = new_app().run()
    visit(at, "spectra")
    click(at, "Measure each layer alone")  # a background job: its progress polled on the page
    store = RunStore(env / "runs.sqlite")
    (row,) = store.jobs("measurements")
    assert wait_for_job(store, "measurements", int(row["id"]))["status"] == "done"
    at.run()
    layers = scatter(at, "Each layer alone, plain SVD")
    assert re.search(r"Spearman ρ = [+-]\d\.\d\d$", layers["layout"]["title"]["text"])
    assert len(layers["data"][0]["text"]) == 12  # every layer of the tiny BERT at the default ranks

    spec = SweepSpec(model=str(tiny_bert_dir), task=str(sentiment_csv), methods=["svd"], budgets=[0.3, 0.5, 0.7])
    assert wait_for_sweep(store, start_sweep(spec, store))["status"] == "done"
    visit(at, "summary")
    click(at, "Compute Fisher information")
    runs = scatter(at, "Plain-SVD runs, whole model")
    assert re.search(r"Spearman ρ = [+-]\d\.\d\d$", runs["layout"]["title"]["text"])
    assert len(runs["data"][0]["text"]) == 3
    visit(at, "spectra")
    assert scatter(at, "Plain-SVD runs, whole model")["layout"]["title"]["text"] == runs["layout"]["title"]["text"]
