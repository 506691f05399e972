"""One comparison rule (lowrank.experiments.compare): the dense run compressed runs are compared with, which runs
are compared with it, and the metric table saying which way a metric is better; the report, the dashboard and
``dense_reference`` use nothing else (the pages' agreement on a run store: tests/dashboard/test_dashboard.py)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pandas as pd

from lowrank.experiments.compare import (
    ANY,
    METRICS,
    OTHER_METRIC,
    Metric,
    comparable,
    metric_info,
    reference_run,
    sweep_reference,
)
from lowrank.experiments.store import RunStore
from lowrank.report.formats import format_metric

ROOT = Path(__file__).resolve().parents[2]


def finished(store: RunStore, method: str = "dense", value: float = 0.8, **fields) -> int:
    """A finished run of model ``m`` on task ``t`` (weights ``w``), measured on the validation split unless
    ``fields`` say otherwise."""
    run_id = store.start_run(
        **{"model": "m", "task": "t", "fingerprint": "w", "split": "validation", "eval_limit": None, **fields},
        method=method,
    )
    store.finish_run(run_id, metric="accuracy", value=value)
    return run_id


def test_the_reference_is_the_newest_finished_dense_run_of_the_settings_asked(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    whole = finished(store)
    limited = finished(store, eval_limit=2)
    other_weights = finished(store, fingerprint="w2")
    on_test = finished(store, split="test")
    finished(store, method="svd", budget=0.5)  # not dense
    finished(store, model="other", fingerprint="o")  # another model
    store.start_run(model="m", task="t", fingerprint="w", split="validation", method="dense")  # not finished
    failed = store.start_run(model="m", task="t", fingerprint="w", split="validation", method="dense")
    store.fail_run(failed, "boom")

    assert reference_run(store, "t", model="m")["id"] == on_test  # settings left open: the newest
    assert reference_run(store, "t", model="m", split=ANY, eval_limit=ANY)["id"] == on_test
    assert reference_run(store, "t", model="m", split="validation", eval_limit=None)["id"] == other_weights
    assert reference_run(store, "t", fingerprint="w", split="validation", eval_limit=None)["id"] == whole
    assert reference_run(store, "t", fingerprint="w", eval_limit=2)["id"] == limited
    assert reference_run(store, "t", model="m", split="train") is None
    assert reference_run(store, "absent", model="m") is None


def test_a_sweeps_dense_reference_is_measured_under_its_runs_protocol(tmp_path):
    """Home, Factorize and the decoder demo compare a sweep's runs with one rule: the dense run of the same weights,
    split, limit and protocol; a newer dense run under another protocol is not it (regression: the decoder demo
    took the newest dense run of the weights whatever its protocol)."""
    store = RunStore(tmp_path / "runs.sqlite")
    windows = finished(store, protocol="windows of 2048 tokens")
    finished(store, protocol="per-document")  # newer, measured otherwise
    finished(store, method="svd", budget=0.5, protocol="windows of 2048 tokens")
    spec = {"model": "m", "task": "t", "split": "validation", "eval_limit": None}
    runs = store.runs(method="svd")
    assert sweep_reference(store, spec, runs)["id"] == windows
    unmeasured = sweep_reference(store, spec, runs.iloc[0:0])  # no run finished yet: the sweep's model, any protocol
    assert unmeasured is not None and unmeasured["protocol"] == "per-document"


def test_comparable_runs_are_measured_on_the_split_limit_and_protocol_of_the_reference():
    windows, documents = "windows of 2048 tokens (...)", "per-document (...)"
    runs = pd.DataFrame(
        {
            "id": [6, 5, 4, 3, 2, 1],
            "split": ["validation", "validation", "validation", "test", "validation", "validation"],
            "eval_limit": [float("nan"), float("nan"), 2.0, float("nan"), float("nan"), 2.0],
            "protocol": [documents, windows, windows, windows, windows, windows],
        }
    )
    reference = {"split": "validation", "eval_limit": None, "protocol": windows}
    assert list(comparable(runs, reference)["id"]) == [5, 2]
    assert list(comparable(runs, {**reference, "protocol": documents})["id"]) == [6]
    assert list(comparable(runs, {**reference, "eval_limit": 2})["id"]) == [4, 1]
    assert list(comparable(runs, {**reference, "split": "test", "eval_limit": float("nan")})["id"]) == [3]
    assert list(comparable(runs, None)["id"]) == [6]  # no reference: like the newest row
    assert comparable(runs.iloc[:0], None).empty


def test_the_metric_table_says_which_way_is_better_and_how_it_reads():
    assert metric_info("accuracy") == Metric(higher_is_better=True, decimals=3, log_axis=False)
    assert metric_info("perplexity") == Metric(higher_is_better=False, decimals=2, log_axis=True)
    assert metric_info(None) == metric_info("f1") == OTHER_METRIC and OTHER_METRIC.higher_is_better
    assert format_metric("perplexity", 32.456) == "32.46" and format_metric("accuracy", 0.8) == "0.800"
    assert format_metric(None, 0.8) == "0.800" and format_metric("accuracy", math.nan) == "–"


def _sources() -> list[Path]:
    """The report, the dashboard and its pages, and the run module: where runs are compared."""
    return [
        ROOT / "app.py",
        ROOT / "lowrank" / "experiments" / "run.py",
        *sorted((ROOT / "lowrank" / "report").glob("*.py")),
        *sorted((ROOT / "dashboard").glob("*.py")),
        *sorted((ROOT / "pages").glob("*.py")),
    ]


def test_runs_are_compared_by_the_one_rule_only():
    """No other module picks a dense run from the store (``find_run``) or asks whether a metric is perplexity to
    know which way is better: they call :func:`reference_run` and read :data:`METRICS`."""
    lower_is_better = {name for name, metric in METRICS.items() if not metric.higher_is_better}
    picked, asked = [], []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "find_run":
                picked.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Constant) and side.value in lower_is_better
                for side in (node.left, *node.comparators)
            ):
                asked.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert picked == [] and asked == []
