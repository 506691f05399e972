"""Background builds of fine-tuned models: one job per model (:mod:`lowrank.experiments.jobs`), in the ``builds`` table.

:func:`start_build` runs a :class:`lowrank.training.finetune.Recipe` in a worker process unless the model is built; a
build of the same model already running, started by any process, is reused (:meth:`RunStore.start_build` decides in
one transaction), and one that ended can be started again. :func:`run_build`, the worker's part, runs
:func:`lowrank.training.finetune.build` and writes its step, total and message to the row as it goes. :func:`eta_s`
is a running build's time left, ``elapsed / step * (total - step)`` since its steps started.
Cost: the fine-tuning; at most one SQLite write per :data:`~lowrank.experiments.jobs.PROGRESS_S` seconds besides.
"""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path

from lowrank.experiments.jobs import PROGRESS_S, Job, Throttle, reap_stale
from lowrank.experiments.stop import stoppable
from lowrank.experiments.store import RunStore
from lowrank.training.finetune import Recipe, build


def log_path(store: RunStore, build_id: int) -> Path:
    return Job(store, "builds", build_id).log


def start_build(recipe: Recipe, store: RunStore | None = None) -> int | None:
    """Build ``recipe`` in a worker process; returns the id of its build (a new one, or the one already running),
    ``None`` when the model is built. A process that cannot be started ends the build ``failed``, saying why."""
    store = store or RunStore()
    reap_stale(store)
    build_id, new = store.start_build(recipe.name, recipe.to_dict(), needed=lambda: not recipe.built)
    if new:
        with suppress(OSError):  # the build ended failed, saying why: the caller shows its row
            Job(store, "builds", build_id).launch()
    return build_id


def latest_build(store: RunStore, name: str) -> dict | None:
    """The newest build of model ``name`` (after :func:`~lowrank.experiments.jobs.reap_stale`), or ``None``."""
    reap_stale(store)
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
    """The progress callback of a build: writes step, total and message as often as its :class:`Throttle` lets it (and
    always the first call, which also records when the steps started, and the last steps)."""

    def __init__(self, store: RunStore, build_id: int, interval: float = PROGRESS_S):
        self.store, self.build_id = store, build_id
        self.throttle = Throttle(interval)
        self.started = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.throttle(force=done >= total):
            fields = {} if self.started else {"started": time.time()}
            self.store.update_build(self.build_id, step=done, total=total, message=message, **fields)
            self.started = True


def run_build(store: RunStore, build_id: int) -> dict:
    """Run the recorded build ``build_id`` in this process; returns the training record."""
    recipe = Recipe.from_dict(store.get_build(build_id)["spec"])
    with Job(store, "builds", build_id).running() as done:
        record = build(recipe, progress=stoppable(_BuildProgress(store, build_id)))
        done["message"] = f"built: validation accuracy {record['validation_accuracy']:.1%}"
    return record
