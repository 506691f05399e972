"""The explaining views under AppTest: why each layer has its rank, predicted against measured, generations."""

from __future__ import annotations

import numpy as np
import pytest

from tests.dashboard.test_dashboard import click, env, new_app, plotly_specs, plotted, visit  # noqa: F401 (a fixture)

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
