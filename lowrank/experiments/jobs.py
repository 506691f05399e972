"""What every background job (a sweep, a model build) shares: its detached worker process and its heartbeat.

* :func:`spawn`: ``python -m lowrank.experiments.worker ARGS`` in its own session, so a closed browser tab, a
  stopped dashboard or a Ctrl-C in its terminal does not end it.
* :class:`Heartbeat`: while a job runs, a thread writes its row every :data:`HEARTBEAT_S` seconds; a running job
  of another host not written for :data:`STALE_S` seconds has lost its owner (jobs of this host are checked by
  process id, :meth:`lowrank.experiments.store.RunStore.reap`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lowrank.experiments.stop import request_stop

HEARTBEAT_S = 10.0  # a running job's process writes its row at least this often
STALE_S = 120.0  # a running job of another host not written for this long has lost its owner


def spawn(args: list[str], log: Path) -> int:
    """Start the worker with ``args`` as a detached process, its output appended to ``log``; returns its pid."""
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


class Heartbeat:
    """While a job runs: calls ``beat()`` every ``interval`` seconds in a thread; when it returns False (the row asks
    the job to stop, or another host declared it lost), stops the job (:func:`lowrank.experiments.stop.request_stop`)."""

    def __init__(self, beat: Callable[[], bool], name: str, interval: float = HEARTBEAT_S):
        self.beat, self.interval = beat, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

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
