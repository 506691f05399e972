"""Background jobs: a row of the run store's ``sweeps``, ``builds`` or ``measurements`` table, run by a detached worker
process.

A job is ``running`` while a live process owns it (host, pid, start time) and ends once, as :func:`ending` decides
(for single runs too): ``done`` when its work returns, ``failed`` with the error's message when the work raises,
``interrupted`` on Ctrl-C, SIGTERM or a stop request. Its owner writes the row every :data:`HEARTBEAT_S` seconds
(:class:`Heartbeat`). A job whose owner is gone ends ``interrupted``: of this host when its process is dead
(:meth:`~lowrank.experiments.store.RunStore.reap`), of another host when its heartbeat is :data:`STALE_S` seconds
old (:func:`reap_stale`). Progress is written at most every :data:`PROGRESS_S` seconds (:class:`Throttle`).
Cost: one process start per job, one SQLite write per heartbeat and per progress write.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank.experiments.stop import request_stop
from lowrank.processes import process_alive

if TYPE_CHECKING:
    from lowrank.experiments.store import RunStore

TABLES = ("sweeps", "builds", "measurements")  # the run store's tables of jobs
HEARTBEAT_S = 10.0  # a running job's process writes its row at least this often
STALE_S = 120.0  # a running job of another host not written for this long has lost its owner
PROGRESS_S = 0.5  # a job writes its progress at most this often
STOP_REQUEST = "stop requested"  # a running job's error: its owner's heartbeat stops it


@contextmanager
def ending(end: Callable[..., None]) -> Iterator[dict]:
    """How a job whose work is the block ends, decided here only.

    The block returns: ``end("done", **fields)`` with the fields it put in the yielded dict. It raises an
    ``Exception``: ``end("failed", error="Type: message")``. Anything else (``KeyboardInterrupt`` from Ctrl-C,
    SIGTERM or a stop request; ``SystemExit``; Streamlit's stop): ``end("interrupted", error="interrupted (Type)")``.
    The exception propagates."""
    done: dict = {}
    try:
        yield done
    except Exception as err:
        end("failed", error=f"{type(err).__name__}: {err}")
        raise
    except BaseException as err:
        end("interrupted", error=f"interrupted ({type(err).__name__})")
        raise
    end("done", **done)


def spawn(args: list[str], log: Path) -> int:
    """Start the worker with ``args`` as a detached process, its output appended to ``log``; returns its pid.

    Its own session: a closed browser tab, a stopped dashboard or a Ctrl-C in its terminal does not end it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    # busy-waiting OpenMP threads slow MKL's SVD down badly when the worker shares the cores with the dashboard
    # (measured: docs/results/dashboard.md)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lowrank.experiments.worker", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    threading.Thread(target=proc.wait, name=f"worker-{proc.pid}-reaper", daemon=True).start()  # no zombie left
    return proc.pid


def heartbeat_age(row: dict, now: float | None = None) -> float:
    """Seconds since a job's row was last written (its heartbeat), from the row's raw ``updated`` time."""
    updated = row.get("updated")
    return float("inf") if updated is None else (now or time.time()) - float(updated)


@dataclass(frozen=True)
class Job:
    """Job ``id`` of ``table`` (one of :data:`TABLES`) in ``store``."""

    store: RunStore
    table: str
    id: int

    @property
    def kind(self) -> str:
        return self.table[:-1]  # "sweep", "build", "measurement"

    @property
    def log(self) -> Path:
        """``<store folder>/<table>/<kind>-<id>.log``: the output of its worker."""
        return self.store.path.parent / self.table / f"{self.kind}-{self.id}.log"

    def row(self) -> dict:
        return self.store.get_job(self.table, self.id)

    def claim(self, pid: int, **fields) -> None:
        """Record ``pid`` (a live process of this host) as the owner, writing ``fields`` in the same transaction."""
        self.store.claim_job(self.table, self.id, pid, **fields)

    def end(self, status: str, error: str | None = None, **fields) -> None:
        """End the job ``status``, with ``status`` as its message unless ``fields`` give one."""
        self.store.end_job(self.table, self.id, status, error=error, **{"message": status, **fields})

    def launch(self) -> None:
        """Run this recorded job in a worker (``python -m lowrank.experiments.worker --db FILE --<kind> ID``), its
        owner from now on. A process that cannot start ends the job ``failed``, saying why; the OSError propagates."""
        try:
            pid = spawn(["--db", str(self.store.path), f"--{self.kind}", str(self.id)], self.log)
        except OSError as err:
            self.end("failed", error=f"cannot start its process: {err}")
            raise
        self.claim(pid)

    @contextmanager
    def running(self) -> Iterator[dict]:
        """Run the block as this job's work, in its owner: a :class:`Heartbeat` while it runs, then its end
        (:func:`ending`; the fields the block puts in the yielded dict, a ``message``..., are written with ``done``)."""
        with ending(self.end) as done, Heartbeat(self):
            yield done

    def end_lost(self, reason: str) -> None:
        """End a job whose owner is gone ``interrupted`` for ``reason``, and a sweep's runs still running with it."""
        self.end("interrupted", error=reason)
        if self.table == "sweeps":
            for run_id in self.store.runs(sweep_id=self.id, status="running")["id"]:
                self.store.fail_run(int(run_id), reason, "interrupted")

    def cancel(self) -> bool:
        """Stop the job; False when it is not running (after :func:`reap_stale`).

        This host's: SIGTERM to its process. Another host's: a stop request in its row, which the owner's heartbeat
        reads within :data:`HEARTBEAT_S` seconds; an owner that has already missed a few beats is taken as gone and
        the job ends ``interrupted`` at once."""
        reap_stale(self.store)
        row, host = self.row(), socket.gethostname()
        if row["status"] != "running":
            return False
        if row.get("host") == host:
            if not process_alive(row["pid"], row["pid_started"]):
                return False
            os.kill(int(row["pid"]), signal.SIGTERM)
            return True
        age = heartbeat_age(row, time.time())
        if age > 3 * HEARTBEAT_S:
            self.end_lost(f"stopped from {host}: its owner on host {row.get('host')} stopped reporting {age:.0f} s ago")
        else:
            self.store.update_job(self.table, self.id, error=f"{STOP_REQUEST} from {host}")
        return True


def reap_stale(store: RunStore, stale_after: float = STALE_S) -> list[tuple[str, int]]:
    """End ``interrupted`` every running job of another host whose heartbeat is older than ``stale_after``
    seconds (:meth:`Job.end_lost`); returns their ``(table, id)``. Jobs of this host are reaped by process id."""
    host, now, ended = socket.gethostname(), time.time(), []
    for table in TABLES:
        for row in store.jobs(table, status="running"):
            age = heartbeat_age(row, now)
            # a live owner answers a stop request within a heartbeat: after a few, it is gone
            stopping = str(row.get("error") or "").startswith(STOP_REQUEST)
            if row.get("host") != host and age > (min(stale_after, 3 * HEARTBEAT_S) if stopping else stale_after):
                Job(store, table, int(row["id"])).end_lost(
                    f"its owner on host {row.get('host')} stopped reporting {age:.0f} s ago"
                )
                ended.append((table, int(row["id"])))
    return ended


class Heartbeat:
    """While its job runs, a thread writes the row's ``updated`` time every ``interval`` seconds; it stops the job
    (:func:`~lowrank.experiments.stop.request_stop`) when the row is no longer ``running`` (another host declared it
    lost) or holds a stop request (:meth:`Job.cancel`)."""

    def __init__(self, job: Job, interval: float = HEARTBEAT_S):
        self.job, self.interval = job, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{job.kind}-{job.id}-heartbeat", daemon=True)

    def beat(self) -> bool:
        """One beat; False when the job is to stop."""
        row = self.job.row()
        if row["status"] != "running" or str(row.get("error") or "").startswith(STOP_REQUEST):
            return False
        self.job.store.update_job(self.job.table, self.job.id)  # only `updated`: the heartbeat
        return True

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                if not self.beat():
                    request_stop()
                    return
            except Exception:
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


class Throttle:
    """Whether a job may write its progress now: at the first call, when forced, else every ``interval`` seconds."""

    def __init__(self, interval: float = PROGRESS_S):
        self.interval = interval
        self._last: float | None = None

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


class StepProgress:
    """The progress callback of a job counting steps: writes step, total and message to its row as often as its
    :class:`Throttle` lets it (always the first call, which also records when the steps started, and the last step)."""

    def __init__(self, job: Job, interval: float = PROGRESS_S):
        self.job = job
        self.throttle = Throttle(interval)
        self.started = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.throttle(force=done >= total):
            fields = {} if self.started else {"started": time.time()}
            self.job.store.update_job(self.job.table, self.job.id, step=done, total=total, message=message, **fields)
            self.started = True


def eta_s(row: dict, now: float | None = None) -> float | None:
    """Seconds a running job counting steps has left, elapsed / done * (total - done) since its steps started;
    ``None`` before its first step."""
    step, total, started = row.get("step") or 0, row.get("total") or 0, row.get("started")
    if step <= 0 or not total or started is None:
        return None
    return ((now or time.time()) - float(started)) / step * max(0, total - step)
