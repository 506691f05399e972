"""Sweeps: every method of a :class:`~lowrank.experiments.sweep_spec.SweepSpec` at each of its budgets, recorded.

Per budget the strategy allocates a :class:`lowrank.RankPlan` (explicit ranks make one instead), then every method
compresses the model to it and is evaluated (:func:`lowrank.experiments.run.execute_run`), after one dense reference.
A run already stored with the same key (:func:`lowrank.experiments.run.find_same_run`) is not run again, so a repeated
or resumed sweep runs only what is missing. A sweep is a job (:mod:`lowrank.experiments.jobs`): :func:`start_sweep`
runs it in a worker, which calls :func:`run_sweep`; it ends ``done`` even when single runs fail (those rows are
``failed``), ``failed`` when the model, task or statistics cannot be had, ``interrupted`` when stopped.
Cost: one compression and one evaluation per method and budget, plus the statistics they need (cached on disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from lowrank.allocation import PlannedLayer, RankPlan, allocate
from lowrank.compress import save_compressed
from lowrank.data.tasks import load_task
from lowrank.evaluation.quality import check_task_fits
from lowrank.experiments.jobs import STALE_S, Job, Throttle, reap_stale
from lowrank.experiments.run import dense_reference, execute_run, find_same_run, output_folder, run_fields
from lowrank.experiments.stop import check_stop, stoppable
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep_spec import SweepSpec, plugin_modules
from lowrank.healing.heal import recipe_for
from lowrank.models.loading import load_model
from lowrank.progress import Progress, scaled
from lowrank.ranks import linear_shapes, resolve_ranks
from lowrank.sequential import check_runnable
from lowrank.statistics import statistics_for


def start_sweep(spec: SweepSpec, store: RunStore | None = None) -> int:
    """Validate ``spec``, record the sweep and run it in a worker process; returns the sweep id at once.

    Methods registered outside :mod:`lowrank.methods` travel as the modules that registered them
    (:func:`~lowrank.experiments.sweep_spec.plugin_modules`), which must be importable there (``PYTHONPATH``)."""
    spec.validate()
    spec.modules = sorted(set(spec.modules) | set(plugin_modules(spec.methods)))
    store = store or RunStore()
    sweep_id = store.create_sweep(spec.to_dict(), label=spec.label, runs_total=spec.runs_total)
    Job(store, "sweeps", sweep_id).launch()
    return sweep_id


def resume_sweep(store: RunStore, sweep_id: int) -> int:
    """Run a sweep that ended (interrupted, failed, or done with failed runs) again in a worker process, under the
    same id: the runs it already stored are not run again. Returns ``sweep_id``."""
    reap_stale(store)
    sweep = store.get_sweep(sweep_id)
    if sweep["status"] == "running":
        raise ValueError(f"sweep {sweep_id} is still running")
    SweepSpec.from_dict(sweep["spec"]).validate()
    job = Job(store, "sweeps", sweep_id)
    # owned by this process until the worker claims it: a reader never sees a dead owner
    job.claim(os.getpid(), status="running", finished=None, error=None, progress=0.0, message="resuming")
    job.launch()
    return sweep_id


def running_sweeps(store: RunStore, stale_after: float = STALE_S):
    """The running sweeps (a DataFrame, newest first), after :func:`~lowrank.experiments.jobs.reap_stale`."""
    reap_stale(store, stale_after)
    return store.sweeps(status="running")


def cancel_sweep(store: RunStore, sweep_id: int) -> bool:
    """Stop a running sweep and its current run (:meth:`lowrank.experiments.jobs.Job.cancel`); False when it is not
    running."""
    return Job(store, "sweeps", sweep_id).cancel()


def log_path(store: RunStore, sweep_id: int) -> Path:
    return Job(store, "sweeps", sweep_id).log


def run_sweep(spec: SweepSpec, store: RunStore, sweep_id: int) -> dict:
    """Run ``spec`` in this process as the sweep ``sweep_id``, recording every run with it; returns counts of done and
    failed runs (runs found in the store with the same key count as done and are not run again)."""
    with Job(store, "sweeps", sweep_id).running() as done:
        counts, reused = _run_units(spec, store, sweep_id)
        check_stop()
        done["runs_done"] = counts["done"] + counts["failed"]
        done["message"] = (
            f"{counts['done']} run(s) done"
            + (f" ({len(reused)} already stored)" if reused else "")
            + (f", {counts['failed']} failed" if counts["failed"] else "")
        )
    return counts


class _SweepProgress:
    """Maps work units onto the sweep's progress in [0, 1], written as often as its :class:`Throttle` lets it."""

    def __init__(self, store: RunStore, sweep_id: int, units: int):
        self.store, self.sweep_id, self.units = store, sweep_id, max(1, units)
        self.throttle = Throttle()

    def write(self, fraction: float, message: str, force: bool = False, **fields) -> None:
        if self.throttle(force):
            self.store.update_sweep(self.sweep_id, progress=min(1.0, fraction), message=message, **fields)

    def unit(self, index: int, label: str, **fields) -> Progress:
        """Start work unit ``index`` (writes ``fields`` too); returns the unit's progress callback."""

        def progress(done: int, total: int, message: str = "") -> None:
            inner = done / total if total else 1.0
            self.write((index + inner) / self.units, f"{label}: {message}" if message else label)

        self.write(index / self.units, label, force=True, **fields)
        return stoppable(progress)


def _run_units(spec: SweepSpec, store: RunStore, sweep_id: int) -> tuple[dict, list]:
    """The sweep's work: statistics, dense reference, every method at every budget. Returns the counts of done and
    failed runs, and the ids of the runs found already stored."""
    spec.validate()
    task = load_task(spec.task)
    loaded = load_model(spec.model, task=task)
    check_task_fits(loaded.name, loaded.kind, task.kind, spec.task)
    check_runnable(spec.methods, loaded)
    healing = None if spec.healing is None else spec.heal_config(recipe_for(loaded))
    needs = spec.needs()
    bar = _SweepProgress(store, sweep_id, spec.runs_total + int(bool(needs)))
    counts, reused = {"done": 0, "failed": 0}, []
    unit = 0
    stats = {}
    if needs:
        stats = statistics_for(loaded, task, needs, spec.settings, progress=bar.unit(unit, "statistics"))
        unit += 1
    common = {"sweep_id": sweep_id, "align": spec.align}
    dense = None
    if spec.dense:
        dense = dense_reference(
            store,
            loaded,
            task,
            spec.task,
            spec.split,
            spec.eval_limit,
            common,
            bar.unit(unit, "dense reference"),
            check_latency=True,
        )
        counts["done"] += 1
        unit += 1
    for budget in spec.budgets:
        plan, plan_error = None, None
        for method in spec.methods:
            progress = bar.unit(unit, f"{method} at {budget:.0%}", runs_done=counts["done"] + counts["failed"])
            unit += 1
            try:
                if plan is None and plan_error is None:
                    try:
                        plan = _plan(loaded, spec, float(budget), stats, task, scaled(progress, 0.0, 0.05))
                    except ValueError as err:
                        plan_error = err
                if plan_error is not None:
                    _record_failure(store, loaded, spec, method, budget, common, plan_error)
                    counts["failed"] += 1
                    continue
                options = spec.options.get(method) or {}
                found = (
                    None
                    if spec.save
                    else find_same_run(
                        store,
                        loaded,
                        spec.task,
                        method,
                        plan.ranks,
                        options=options,
                        split=spec.split,
                        eval_limit=spec.eval_limit,
                        strategy=spec.strategy,
                        budget=float(budget),
                        statistics=spec.statistics,
                        healing=healing,
                    )
                )
                if found is not None:  # stored by an earlier (or this, killed and resumed) sweep
                    reused.append(found["id"])
                    counts["done"] += 1
                    continue
                result = execute_run(
                    store,
                    loaded,
                    task,
                    spec.task,
                    method,
                    plan.ranks,
                    stats=stats,
                    options=options,
                    split=spec.split,
                    eval_limit=spec.eval_limit,
                    fields={**common, "strategy": spec.strategy, "budget": float(budget)},
                    progress=scaled(progress, 0.05, 0.97 if spec.save else 1.0),
                    healing=healing,
                    settings=spec.settings,
                )
                counts["done"] += 1
                if spec.save:
                    _save(store, result, method, dense)
            except Exception:  # recorded as failed by execute_run; the other runs go on
                counts["failed"] += 1
    return counts, reused


def _plan(loaded, spec: SweepSpec, budget: float, stats: dict, task, progress: Progress) -> RankPlan:
    """The plan of one budget: the strategy's allocation, or the spec's explicit ranks on the model's layers, every
    other layer dense (``ValueError`` for ranks the model cannot take, in the words of ``compress``)."""
    if spec.ranks is None:
        return allocate(loaded, budget, spec.strategy, stats=stats, align=spec.align, task=task, progress=progress)
    ranks = resolve_ranks(loaded, dict(spec.ranks))
    shapes = linear_shapes(loaded)
    dense_params = sum(out * inp for out, inp in shapes.values())
    layers = [PlannedLayer(name, out, inp, ranks.get(name)) for name, (out, inp) in shapes.items()]
    return RankPlan(layers, max(1, round(budget * dense_params)), spec.strategy, spec.align, {"edited": True})


def _save(store: RunStore, result, method: str, dense: dict | None = None) -> None:
    """Save a run's compressed model, its card naming what was measured beside the ``dense`` reference row, and
    record where (a failure to save is noted on the run, which stays done)."""
    folder = output_folder(store, result.model.name, method, result.run_id)
    try:
        save_compressed(result.model, folder, evaluation=result.evaluation, reference=dense)
    except (OSError, ValueError, RuntimeError) as err:
        store.update_run(result.run_id, error=f"not saved: {type(err).__name__}: {err}")
    else:
        store.update_run(result.run_id, output_dir=str(folder))


def _record_failure(
    store: RunStore, loaded, spec: SweepSpec, method: str, budget: float, common: dict, error: Exception
):
    """A failed row for a run that could not start (a budget below the smallest possible plan, ranks the model cannot
    take)."""
    row = {
        **run_fields(loaded, spec.task, spec.split, spec.eval_limit),
        **common,
        "method": method,
        "strategy": spec.strategy,
        "budget": float(budget),
        "ranks": spec.ranks,  # the explicit ranks that failed, None when the allocation did
        "options": spec.options.get(method) or {},
        "solver": (spec.options.get(method) or {}).get("solver"),
    }
    run_id = store.start_run(**row)
    store.fail_run(run_id, f"{type(error).__name__}: {error}")
