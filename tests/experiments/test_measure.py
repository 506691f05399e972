"""Background measurements of each layer alone (lowrank.experiments.measure, the run store's ``measurements``
table): one job per measurement, results that equal the in-process measurement, no result for other weights."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from lowrank import load_model, load_task
from lowrank.analysis.agreement import single_layer_kl
from lowrank.experiments import jobs, measure, stop
from lowrank.experiments.measure import LayerMeasurement
from lowrank.experiments.store import RunStore
from lowrank.models.architectures import compressible_linears
from lowrank.ranks import resolve_ranks


@pytest.fixture()
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    return RunStore(tmp_path / "cache" / "runs.sqlite")


@pytest.fixture()
def spawned(monkeypatch) -> list:
    """No worker process: start_measurement records its arguments, and this test process owns the job."""
    calls = []
    monkeypatch.setattr(jobs, "spawn", lambda args, log: calls.append(args) or os.getpid())
    return calls


def half_ranks(folder) -> dict[str, int]:
    return resolve_ranks(load_model(str(folder)).model, 0.5)


def test_a_measurement_runs_once_and_new_weights_are_another_measurement(store, spawned, tiny_bert_dir, sentiment_csv):
    ranks = half_ranks(tiny_bert_dir)
    measurement = LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), ranks, batches=1)
    first = measure.start_measurement(measurement, store)
    assert measure.start_measurement(measurement, store) == first and len(spawned) == 1  # running: reused
    assert spawned[0][-2:] == ["--measurement", str(first)]
    store.end_job(measure.TABLE, first, "done", result=[])
    assert measure.start_measurement(measurement, store) is None and len(spawned) == 1  # done: nothing to start
    assert measure.latest(store, measurement)["id"] == first

    (tiny_bert_dir / "model.safetensors").touch()  # the weight files changed (a new modification time)
    changed = LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), ranks, batches=1)
    assert changed.name != measurement.name and measure.latest(store, changed) is None
    assert measure.start_measurement(changed, store) != first and len(spawned) == 2
    other = LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), ranks, batches=2)  # another setting
    assert other.name not in (measurement.name, changed.name)


def test_the_background_result_is_the_single_layer_measurement(store, tiny_bert_dir, sentiment_csv):
    ranks = half_ranks(tiny_bert_dir)
    measurement = LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), ranks, batches=2)
    job_id, new = store.start_named_job(measure.TABLE, measurement.name, measurement.to_dict(), needed=lambda: True)
    assert new
    summary = measure.run_measurement(store, job_id)  # the worker's part, in this process
    row = store.get_job(measure.TABLE, job_id)
    layers = len(compressible_linears(load_model(str(tiny_bert_dir)).model))
    assert row["status"] == "done" and summary == {"layers": layers, "batches": 2}
    assert row["step"] == row["total"] and row["started"] is not None and "measured 12 layers" in row["message"]

    task = load_task(str(sentiment_csv))
    expected = single_layer_kl(load_model(str(tiny_bert_dir), task=task), task, ranks, limit=2)
    expected = expected.sort_values("name", ignore_index=True)  # a measurement keeps its layers by name
    pd.testing.assert_frame_equal(measure.result_frame(row), expected, check_dtype=False, rtol=1e-9)
    assert measure.latest(store, measurement)["id"] == job_id


def test_a_stopped_measurement_ends_interrupted_without_a_result(store, tiny_bert_dir, sentiment_csv, monkeypatch):
    measurement = LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), half_ranks(tiny_bert_dir), batches=1)
    job_id, _ = store.start_named_job(measure.TABLE, measurement.name, measurement.to_dict(), needed=lambda: True)
    monkeypatch.setattr(stop, "_STOP", stop.threading.Event())
    stop.request_stop()  # what SIGTERM or a lost heartbeat does: the next progress tick stops it
    with pytest.raises(KeyboardInterrupt):
        measure.run_measurement(store, job_id)
    row = store.get_job(measure.TABLE, job_id)
    assert row["status"] == "interrupted" and row["result"] is None
    with pytest.raises(ValueError, match="no result"):
        measure.result_frame(row)


def test_a_measurement_of_nothing_is_refused(tiny_bert_dir, sentiment_csv):
    with pytest.raises(ValueError, match="every layer is kept dense"):
        LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), {})
    with pytest.raises(ValueError, match="batches must be at least 1"):
        LayerMeasurement(str(tiny_bert_dir), str(sentiment_csv), {"x": 1}, batches=0)
