"""The SQLite run store (lowrank.experiments.store) and recorded runs / sweeps (lowrank.experiments)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lowrank.experiments.store import RunStore
from lowrank.processes import process_alive

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_round_trip_and_restart(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    run_id = store.start_run(
        model="tiny",
        task="toy.csv",
        method="svd",
        strategy="uniform",
        budget=0.5,
        ranks={"a.b": 8, "c.d": 16},
        options={"solver": "als"},
        solver="als",
    )
    assert store.get_run(run_id)["status"] == "running"
    store.finish_run(
        run_id,
        metric="accuracy",
        value=0.75,
        params_linear=1234,
        size_bytes=10_000,
        latency_ms_b1=1.5,
        wall_s=2.0,
        loss=float("nan"),
    )
    row = store.get_run(run_id)
    assert row["status"] == "done" and row["value"] == 0.75 and row["loss"] is None
    assert row["ranks"] == {"a.b": 8, "c.d": 16} and row["options"] == {"solver": "als"}
    assert row["finished"] >= row["created"]

    again = RunStore(path)  # a restarted dashboard / another process
    frame = again.runs(model="tiny")
    assert list(frame["id"]) == [run_id]
    assert frame["created"].dtype.kind == "M"
    assert again.find_run(method="svd", task="toy.csv")["id"] == run_id
    assert again.find_run(method="dense") is None
    with pytest.raises(ValueError, match="unknown run store field"):
        again.start_run(modle="typo")
    with pytest.raises(ValueError, match="status must be one of"):
        again.update_run(run_id, status="weird")
    with pytest.raises(KeyError):
        again.get_run(999)


def test_failed_and_interrupted_rows(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="boom"):
        with store.record(model="m", method="svd"):
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with store.record(model="m", method="fwsvd"):
            raise KeyboardInterrupt
    with store.record(model="m", method="tfwsvd") as run:
        run.update(value=0.5)
    frame = store.runs().set_index("method")
    assert frame.loc["svd", "status"] == "failed" and "ValueError: boom" in frame.loc["svd", "error"]
    assert frame.loc["fwsvd", "status"] == "interrupted"
    assert frame.loc["tfwsvd", "status"] == "done" and frame.loc["tfwsvd", "value"] == 0.5
    assert list(store.runs(status=["failed", "interrupted"])["method"]) == ["fwsvd", "svd"]


def test_running_row_of_a_dead_process_reads_as_interrupted(tmp_path):
    path = tmp_path / "runs.sqlite"
    done = run_python(f"""
        import os
        from lowrank.experiments.store import RunStore
        store = RunStore({str(path)!r})
        store.start_run(model="m", method="svd")
        sweep = store.create_sweep({{"methods": ["svd"]}}, label="x")
        print(sweep)
        os._exit(0)  # dies without finishing either
    """)
    assert done.returncode == 0, done.stderr
    store = RunStore(path)
    row = store.runs().iloc[0]
    assert row["status"] == "interrupted" and "ended without finishing" in row["error"]
    assert store.get_sweep(int(done.stdout.strip()))["status"] == "interrupted"
    mine = store.start_run(model="m", method="fwsvd")  # this process is alive: stays running
    assert store.get_run(mine)["status"] == "running"


def test_concurrent_writers(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path)
    code = f"""
        from lowrank.experiments.store import RunStore
        store = RunStore({str(path)!r})
        for i in range(40):
            run = store.start_run(model="proc", method="svd", budget=i / 40)
            store.finish_run(run, value=i)
    """
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = []

    def thread_writer():
        store = RunStore(path)
        try:
            for i in range(40):
                with store.record(model="thread", method="fwsvd") as run:
                    run.finish(value=i)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=thread_writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert not errors
    frame = RunStore(path).runs()
    assert len(frame) == 240 and (frame["status"] == "done").all()
    assert frame["id"].is_unique


def test_sweep_spec_validation():
    from lowrank.experiments.sweep import SweepSpec

    ok = SweepSpec("m", "t", ["svd", "fwsvd"], [0.3, 0.5], strategy="uniform", options={"fwsvd": {"axis": "out"}})
    assert ok.validate().runs_total == 5 and ok.needs() == ("fisher",)
    assert SweepSpec.from_dict(ok.to_dict()) == ok
    with pytest.raises(ValueError, match="unknown method"):
        SweepSpec("m", "t", ["nope"], [0.5]).validate()
    with pytest.raises(ValueError, match="kept fraction"):
        SweepSpec("m", "t", ["svd"], [1.5]).validate()
    with pytest.raises(ValueError, match="unknown allocation strategy"):
        SweepSpec("m", "t", ["svd"], [0.5], strategy="nope").validate()
    with pytest.raises(ValueError, match="not in the sweep"):
        SweepSpec("m", "t", ["svd"], [0.5], options={"tfwsvd": {}}).validate()


def test_run_sweep_records_runs_and_failures(tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch):
    from lowrank.experiments.sweep import SweepSpec, run_sweep

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    store = RunStore(tmp_path / "runs.sqlite")
    spec = SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd", "fwsvd"], [0.01, 0.5], strategy="fisher_greedy")
    sweep_id = store.create_sweep(spec.to_dict(), runs_total=spec.runs_total)
    counts = run_sweep(spec, store, sweep_id)
    assert counts == {"done": 3, "failed": 2}  # dense + 2 methods at 50%; 1% is below the smallest plan
    sweep = store.get_sweep(sweep_id)
    assert sweep["status"] == "done" and sweep["progress"] == 1.0 and "2 failed" in sweep["message"]
    runs = store.runs(sweep_id=sweep_id)
    failed = runs[runs["status"] == "failed"]
    assert set(failed["budget"]) == {0.01} and failed["error"].str.contains("below the smallest possible plan").all()
    done = runs[(runs["status"] == "done") & (runs["method"] != "dense")]
    assert set(done["method"]) == {"svd", "fwsvd"} and (done["strategy"] == "fisher_greedy").all()
    assert (done["kept_fraction"] <= 0.5).all() and done["ranks"].map(len).gt(0).all()

    # a second sweep reuses the stored dense reference instead of evaluating again
    again = SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.5])
    second = store.create_sweep(again.to_dict(), runs_total=again.runs_total)
    run_sweep(again, store, second)
    assert (store.runs(method="dense")["status"] == "done").sum() == 1


def test_a_stop_signal_that_python_swallowed_still_interrupts_the_sweep(
    tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch
):
    """A SIGTERM landing inside a ``__del__`` raises there, and Python only prints it ("Exception
    ignored in ..."): the sweep must still notice the request at its next progress write."""
    import signal

    from lowrank.experiments import stop, sweep

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stop, "_STOP", threading.Event())
    store = RunStore(tmp_path / "runs.sqlite")
    spec = sweep.SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.5], strategy="uniform")
    sweep_id = store.create_sweep(spec.to_dict(), label=spec.label, runs_total=spec.runs_total)

    class Collected:
        def __del__(self):
            stop.interrupt(signal.SIGTERM, None)  # the handler, run while an object is collected

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    Collected()  # its KeyboardInterrupt goes to sys.unraisablehook and is lost; the stop request is not
    assert swallowed == [KeyboardInterrupt]
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, store, sweep_id)
    assert store.get_sweep(sweep_id)["status"] == "interrupted"
    assert store.runs(sweep_id=sweep_id).empty or "done" not in set(store.runs(sweep_id=sweep_id)["status"])


def test_background_sweep_can_be_cancelled(tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch):
    from lowrank.experiments.sweep import SweepSpec, cancel_sweep, log_path, start_sweep

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    store = RunStore(tmp_path / "runs.sqlite")
    spec = SweepSpec(
        str(tiny_bert_dir),
        str(sentiment_csv),
        ["tfwsvd"],
        [0.3, 0.5, 0.7],
        strategy="uniform",
        # a run that cannot finish before it is stopped: a run that ended between the poll and the SIGTERM would
        # leave nothing to interrupt (CI saw one 'done' run and no interrupted one)
        options={"tfwsvd": {"solver": "adam", "max_iters": 10**9, "tol": 0.0}},
    )
    sweep_id = start_sweep(spec, store)
    deadline = time.monotonic() + 120
    try:
        while (
            store.runs(sweep_id=sweep_id, status="running").empty and store.get_sweep(sweep_id)["status"] == "running"
        ):
            assert time.monotonic() < deadline, log_path(store, sweep_id).read_text()
            time.sleep(0.5)
        assert cancel_sweep(store, sweep_id)
        while store.get_sweep(sweep_id)["status"] == "running":
            assert time.monotonic() < deadline, log_path(store, sweep_id).read_text()
            time.sleep(0.5)
    finally:
        row = store.get_sweep(sweep_id)
        if row["status"] == "running" and process_alive(row["pid"], row["pid_started"]):
            os.kill(int(row["pid"]), signal.SIGKILL)  # never leave an endless worker behind a failed test
    assert store.get_sweep(sweep_id)["status"] == "interrupted"
    runs = store.runs(sweep_id=sweep_id)
    assert "running" not in set(runs["status"]) and "interrupted" in set(runs["status"])
    assert not cancel_sweep(store, sweep_id)
    assert not list((tmp_path / "cache").glob("compressed/*"))  # nothing half-written
