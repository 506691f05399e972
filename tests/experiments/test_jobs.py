"""The job lifecycle (lowrank.experiments.jobs) against a real run store: how sweeps, builds, measurements and runs
end, the one reaper of jobs whose owner is gone, a process that cannot start, the progress throttle."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time

import pytest

from lowrank.experiments import jobs, stop
from lowrank.experiments.store import RunStore

DEAD_PID = 2**22 + 1  # above the largest pid Linux allows: never a live process


@pytest.fixture()
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


@pytest.fixture()
def no_stop(monkeypatch):
    """A stop flag of this test's own (a stop request must not leak into other tests)."""
    monkeypatch.setattr(stop, "_STOP", threading.Event())


def new_job(store: RunStore, table: str) -> jobs.Job:
    """A running sweep, build or measurement owned by this process."""
    if table == "sweeps":
        return jobs.Job(store, table, store.create_sweep({"methods": ["svd"]}, label="x"))
    job_id, new = store.start_named_job(table, f"name-{time.monotonic_ns()}", {}, needed=lambda: True)
    assert new
    return jobs.Job(store, table, job_id)


def set_heartbeat(store: RunStore, table: str, job_id: int, seconds_ago: float) -> None:
    """Write the job's ``updated`` time ``seconds_ago`` in the past (what a silent owner leaves)."""
    with sqlite3.connect(store.path) as conn:
        conn.execute(f"UPDATE {table} SET updated = ? WHERE id = ?", (time.time() - seconds_ago, job_id))
    conn.close()


@pytest.mark.parametrize("table", jobs.TABLES)
def test_a_job_whose_work_returns_ends_done_with_its_fields(store, table):
    job = new_job(store, table)
    with job.running() as done:
        assert job.row()["status"] == "running"
        done["message"] = "all good"
    row = job.row()
    assert (row["status"], row["message"], row["error"]) == ("done", "all good", None)
    assert row["finished"] >= row["created"] and row["updated"] >= row["created"]
    if table == "sweeps":
        assert row["progress"] == 1.0

    with store.record(model="m", method="svd") as run:  # a single run ends the same way
        run.update(value=0.5)
    assert store.get_run(run.id)["status"] == "done" and store.get_run(run.id)["value"] == 0.5


@pytest.mark.parametrize("table", jobs.TABLES)
def test_a_job_whose_work_raises_ends_failed_with_the_error_message(store, table):
    job = new_job(store, table)
    with pytest.raises(ValueError, match="boom"):
        with job.running():
            raise ValueError("boom")
    row = job.row()
    assert (row["status"], row["error"], row["message"]) == ("failed", "ValueError: boom", "failed")
    assert row["finished"] is not None

    with pytest.raises(ValueError, match="boom"):
        with store.record(model="m", method="svd") as run:
            raise ValueError("boom")
    assert (store.get_run(run.id)["status"], store.get_run(run.id)["error"]) == ("failed", "ValueError: boom")


@pytest.mark.parametrize("table", jobs.TABLES)
def test_a_job_stopped_ends_interrupted(store, table, no_stop):
    ctrl_c, sigterm, requested = (new_job(store, table) for _ in range(3))
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c.running():
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with sigterm.running():
            stop.interrupt(signal.SIGTERM, None)  # the worker's SIGTERM handler
    with pytest.raises(KeyboardInterrupt):
        with requested.running():
            stop.request_stop()  # a stop request read by the heartbeat, noticed at the next progress tick
            stop.stoppable(lambda done, total, message="": None)(1, 2)
    for job in (ctrl_c, sigterm, requested):
        row = job.row()
        assert (row["status"], row["error"], row["message"]) == (
            "interrupted",
            "interrupted (KeyboardInterrupt)",
            "interrupted",
        )

    with pytest.raises(KeyboardInterrupt):
        with store.record(model="m", method="svd") as run:
            raise KeyboardInterrupt
    assert store.get_run(run.id)["status"] == "interrupted"


def test_one_reaper_ends_the_jobs_whose_owner_is_gone(store):
    here = {table: new_job(store, table) for table in jobs.TABLES}  # this host, their process died
    lost = {table: new_job(store, table) for table in jobs.TABLES}  # another host, silent for too long
    alive = {table: new_job(store, table) for table in jobs.TABLES}  # another host, reporting
    for job in here.values():
        store.update_job(job.table, job.id, pid=DEAD_PID)
    for job in (*lost.values(), *alive.values()):
        store.update_job(job.table, job.id, host="another-host", pid=4242, pid_started=1.0)
    run_id = store.start_run(sweep_id=lost["sweeps"].id, method="svd", model="m")
    store.update_run(run_id, host="another-host", pid=4242, pid_started=1.0)
    for job in lost.values():
        set_heartbeat(store, job.table, job.id, jobs.STALE_S + 5)

    ended = jobs.reap_stale(store)
    assert ended == [(table, lost[table].id) for table in jobs.TABLES]
    for job in here.values():
        row = job.row()
        assert row["status"] == "interrupted" and "ended without finishing" in row["error"]
    for job in lost.values():
        row = job.row()
        assert row["status"] == "interrupted" and "another-host stopped reporting" in row["error"]
        assert row["message"] == "interrupted"
    assert store.get_run(run_id)["status"] == "interrupted"  # a lost sweep's runs end with it
    assert all(job.row()["status"] == "running" for job in alive.values())
    assert jobs.reap_stale(store) == []


def test_a_stop_request_to_another_host_is_read_by_the_owners_heartbeat(store, no_stop):
    job = new_job(store, "builds")
    store.update_job(job.table, job.id, host="another-host", pid=4242, pid_started=1.0)
    assert job.cancel() and job.row()["error"].startswith(f"{jobs.STOP_REQUEST} from {socket.gethostname()}")
    with jobs.Heartbeat(job, interval=0.05):
        deadline = time.monotonic() + 10
        while not stop._STOP.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stop._STOP.is_set()
    set_heartbeat(store, job.table, job.id, 4 * jobs.HEARTBEAT_S)  # an owner that never answers is gone
    assert jobs.reap_stale(store) == [("builds", job.id)] and not job.cancel()


@pytest.mark.parametrize("table", jobs.TABLES)
def test_a_job_whose_process_cannot_start_ends_failed_saying_why(store, table, monkeypatch):
    def refuse(args, log):
        raise PermissionError(13, "Permission denied", str(log))

    monkeypatch.setattr(jobs, "spawn", refuse)
    job = new_job(store, table)
    with pytest.raises(PermissionError):
        job.launch()
    row = job.row()
    assert (
        row["status"] == "failed" and "cannot start its process" in row["error"] and "Permission denied" in row["error"]
    )


def test_a_job_launched_is_owned_by_its_worker(store, monkeypatch, tmp_path):
    spawned = []
    monkeypatch.setattr(jobs, "spawn", lambda args, log: spawned.append((args, log)) or DEAD_PID)
    job = new_job(store, "sweeps")
    job.launch()
    assert spawned == [(["--db", str(store.path), "--sweep", str(job.id)], tmp_path / "sweeps" / f"sweep-{job.id}.log")]
    row = job.row()
    assert row["pid"] == DEAD_PID and row["status"] == "interrupted"  # its worker's, here dead: reaped at this read


def test_progress_is_throttled():
    throttle = jobs.Throttle(interval=60.0)
    assert throttle() and not throttle() and throttle(force=True) and not throttle()
    eager = jobs.Throttle(interval=0.0)
    assert eager() and eager()
