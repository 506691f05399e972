"""Stored lm-eval-harness scores on the Summary and on Trade-offs, each beside the dense run measured the same way."""

from __future__ import annotations

import lowrank
from lowrank.evaluation.harness import HarnessScore, store_scores, task_key
from lowrank.experiments.store import RunStore
from tests.dashboard import test_dashboard
from tests.dashboard.test_dashboard import new_app, visit

env = test_dashboard.env  # the fixture: the app on the tiny BERT, a temporary cache and run store

PROTOCOL = "lm-eval-harness 0.4.13, task toy version 1.0, 0-shot, all 20 examples of test"


def _store_harness_runs(cache, model: str) -> None:
    store = RunStore(cache / "runs.sqlite")
    dense = lowrank.load_model(model)
    small = lowrank.compress(dense, 0.5, method="svd")
    for loaded, value in ((dense, 0.75), (small, 0.6)):
        store_scores(store, loaded, [HarnessScore("toy", "acc", value, 0.1, "test", 20, 0, PROTOCOL)])


def test_harness_scores_show_on_the_summary_and_on_trade_offs(env, tiny_bert_dir):
    _store_harness_runs(env, str(tiny_bert_dir))
    at = new_app().run()
    visit(at, "summary")
    assert any(h.value == "lm-eval-harness scores" for h in at.subheader)
    (table,) = [frame.value for frame in at.dataframe if "protocol" in frame.value.columns and "run" in frame.value]
    assert table[["task", "metric", "method", "value", "dense"]].values.tolist() == [
        ["toy", "acc", "dense", 0.75, 0.75],
        ["toy", "acc", "svd", 0.6, 0.75],
    ]
    assert table["protocol"].tolist() == [PROTOCOL] * 2

    visit(at, "tradeoffs")
    at.selectbox(key="tradeoff_task").set_value(task_key("toy", "acc")).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(PROTOCOL in caption.value for caption in at.caption)
    assert len(at.get("plotly_chart")) == 1
