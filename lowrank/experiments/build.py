"""Background builds of fine-tuned models: one job per model (:mod:`lowrank.experiments.jobs`), in the ``builds`` table.

:func:`start_build` runs a :class:`lowrank.training.finetune.Recipe` in a worker process unless the model is built; a
build of the same model already running, started by any process, is reused (:meth:`RunStore.start_build` decides in
one transaction), and one that ended can be started again. :func:`run_build`, the worker's part, runs
:func:`lowrank.training.finetune.build` and writes its step, total and message to the row as it goes
(:class:`~lowrank.experiments.jobs.StepProgress`).
Cost: the fine-tuning; at most one SQLite write per :data:`~lowrank.experiments.jobs.PROGRESS_S` seconds besides.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from lowrank.experiments.jobs import Job, StepProgress, reap_stale
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


def run_build(store: RunStore, build_id: int) -> dict:
    """Run the recorded build ``build_id`` in this process; returns the training record."""
    recipe = Recipe.from_dict(store.get_build(build_id)["spec"])
    job = Job(store, "builds", build_id)
    with job.running() as done:
        record = build(recipe, progress=stoppable(StepProgress(job)))
        done["message"] = f"built: validation accuracy {record['validation_accuracy']:.1%}"
    return record
