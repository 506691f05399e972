"""Background builds of fine-tuned models: one job per model, in the run store's ``builds`` table.

* :func:`start_build`: runs a :class:`lowrank.training.finetune.Recipe` in a detached process
  (``python -m lowrank.experiments.worker --db FILE --build ID``). Nothing starts when the model is
  built, and a build of the same model already running (started by any process, another dashboard
  or browser tab included) is reused: :meth:`RunStore.start_build` decides in one transaction.
* :func:`run_build`: what the worker runs (:func:`lowrank.training.finetune.build`): step, total and
  message written at most every :data:`PROGRESS_S` seconds, and a heartbeat; the row ends ``done``,
  ``failed`` or ``interrupted`` (SIGTERM; a dead owner is found by :meth:`RunStore.reap` on its host,
  by :func:`reap_stale_builds` elsewhere). An ended build can be started again.
* :func:`latest_build` and :func:`eta_s`: what a progress card shows.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from lowrank.experiments.jobs import STALE_S, Heartbeat, heartbeat_age, spawn
from lowrank.experiments.stop import stoppable
from lowrank.experiments.store import RunStore
from lowrank.training.finetune import Recipe, build

PROGRESS_S = 0.5  # a build writes its step at most this often (and at its first and last step)


def log_path(store: RunStore, build_id: int) -> Path:
    return store.path.parent / "builds" / f"build-{build_id}.log"


def reap_stale_builds(store: RunStore, stale_after: float = STALE_S) -> list[int]:
    """End ``interrupted`` every running build of another host whose heartbeat is older than ``stale_after`` seconds;
    returns their ids (builds of this host are checked by process id, :meth:`RunStore.reap`)."""
    host, now, ended = socket.gethostname(), time.time(), []
    for row in store.builds(status="running"):
        age = heartbeat_age(row, now)
        if row.get("host") != host and age > stale_after:
            store.end_build(
                int(row["id"]),
                "interrupted",
                "interrupted",
                error=f"its owner on host {row.get('host')} stopped reporting {age:.0f} s ago",
            )
            ended.append(int(row["id"]))
    return ended


def start_build(recipe: Recipe, store: RunStore | None = None) -> int | None:
    """Build ``recipe`` in a detached process; returns the id of its build (a new one, or the one already running),
    ``None`` when the model is built. A process that cannot be started ends the build ``failed``, saying why."""
    store = store or RunStore()
    reap_stale_builds(store)
    build_id, new = store.start_build(recipe.name, recipe.to_dict(), needed=lambda: not recipe.built)
    if new:
        try:
            pid = spawn(["--db", str(store.path), "--build", str(build_id)], log_path(store, build_id))
        except OSError as err:
            store.end_build(build_id, "failed", "failed", error=f"cannot start its process: {err}")
        else:
            store.claim_build(build_id, pid)
    return build_id


def latest_build(store: RunStore, name: str) -> dict | None:
    """The newest build of model ``name`` (after :func:`reap_stale_builds`), or ``None``."""
    reap_stale_builds(store)
    rows = store.builds(name=name)
    return rows[0] if rows else None


def eta_s(row: dict, now: float | None = None) -> float | None:
    """Seconds a running build has left, elapsed / done * (total - done) since its steps started; ``None`` before its
    first step."""
    step, total, started = row.get("step") or 0, row.get("total") or 0, row.get("started")
    if step <= 0 or not total or started is None:
        return None
    return ((now or time.time()) - float(started)) / step * max(0, total - step)


class _BuildProgress:
    """The progress callback of a build: writes step, total and message at most every ``interval`` seconds (always
    the first call, which also records when the steps started, and the last steps)."""

    def __init__(self, store: RunStore, build_id: int, interval: float = PROGRESS_S):
        self.store, self.build_id, self.interval = store, build_id, interval
        self.last: float | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        fields = {} if self.last is not None else {"started": time.time()}
        if fields or done >= total or now - self.last >= self.interval:
            self.store.update_build(self.build_id, step=done, total=total, message=message, **fields)
            self.last = now


def run_build(store: RunStore, build_id: int) -> dict:
    """Run the recorded build ``build_id`` in this process; returns the training record."""
    recipe = Recipe.from_dict(store.get_build(build_id)["spec"])

    def beat() -> bool:
        if store.get_build(build_id)["status"] != "running":  # another host declared it lost
            return False
        store.update_build(build_id)  # only `updated`: the heartbeat
        return True

    try:
        with Heartbeat(beat, f"build-{build_id}-heartbeat"):
            record = build(recipe, progress=stoppable(_BuildProgress(store, build_id)))
    except Exception as err:
        store.end_build(build_id, "failed", "failed", error=f"{type(err).__name__}: {err}")
        raise
    except BaseException as err:
        store.end_build(build_id, "interrupted", "interrupted", error=f"interrupted ({type(err).__name__})")
        raise
    store.end_build(build_id, "done", f"built: validation accuracy {record['validation_accuracy']:.1%}")
    return record
