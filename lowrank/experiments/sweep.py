"""Recorded runs and background sweeps (methods x budgets under one allocation strategy).

* :func:`run_sweep`: for every budget, allocate ranks with the strategy, then run every
  method on them; plus one dense reference run (reused from the store when one with the
  same weights, task and evaluation settings exists). Progress and a message go to the
  sweep's row, throttled to a few writes per second. A run already stored with the same key
  (:func:`lowrank.experiments.run.find_same_run`) is not run again, so a repeated sweep, or one
  resumed with :func:`resume_sweep` after it was killed, only runs what is missing.
  (its latency is measured again when the conditions changed). A spec with explicit ``ranks`` (a hand-edited plan: the dashboard's
  Factorize page) runs every method on those ranks instead, at its one budget; with ``save``
  every compressed model is saved (:func:`lowrank.experiments.run.output_folder`).
* :func:`start_sweep`: the same in a detached background process
  (``python -m lowrank.experiments.worker --db FILE --sweep ID``), so a closed browser tab or a
  restarted dashboard loses nothing; :func:`cancel_sweep` stops it (SIGTERM: the current
  run and the sweep end ``interrupted``).
* Ownership: while a sweep runs, its process writes the row's ``updated`` time every
  :data:`lowrank.experiments.jobs.HEARTBEAT_S` seconds. A ``running`` sweep of another host whose heartbeat is older than
  :data:`lowrank.experiments.jobs.STALE_S` has lost its owner: :func:`reap_stale` (called by :func:`running_sweeps` and
  :func:`cancel_sweep`) ends it ``interrupted`` with its running runs. (Sweeps of this host are
  checked by process id, :meth:`RunStore.reap`.) Cancelling a live sweep of another host leaves a
  stop request in its row, which the owner's heartbeat reads.

Methods and strategies get the statistics they need from :func:`lowrank.statistics.statistics_for`
(the sweep's ``statistics`` settings, cached on disk). Each run is :func:`lowrank.experiments.run.execute_run`.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lowrank.allocation import DEFAULT_STRATEGY, allocate, get_strategy
from lowrank.compress import save_compressed
from lowrank.data.tasks import load_task
from lowrank.evaluation.quality import check_task_fits
from lowrank.experiments.jobs import HEARTBEAT_S, STALE_S, Heartbeat, heartbeat_age, spawn
from lowrank.experiments.run import dense_reference, execute_run, find_same_run, output_folder, run_fields
from lowrank.experiments.stop import check_stop, stoppable
from lowrank.experiments.store import RunStore, process_alive, process_started
from lowrank.methods import available_methods, get_method
from lowrank.models.loading import load_model
from lowrank.needs import needs_for
from lowrank.progress import Progress, scaled
from lowrank.statistics import DEFAULT, StatisticsSettings, statistics_for

STOP_REQUEST = "stop requested"  # the row's error while running: the owner's heartbeat stops the sweep


@dataclass
class SweepSpec:
    """What a sweep runs: ``methods`` x ``budgets`` (kept fractions of the compressible parameters)."""

    model: str
    task: str
    methods: list[str]
    budgets: list[float]
    strategy: str = DEFAULT_STRATEGY
    options: dict[str, dict] = field(default_factory=dict)  # per method, e.g. {"tfwsvd": {"solver": "em"}}
    align: int = 8
    split: str = "validation"
    eval_limit: int | None = None  # evaluate on at most this many batches (None: the whole split)
    dense: bool = True  # also record the dense reference
    label: str = ""
    statistics: dict = field(default_factory=dict)  # StatisticsSettings fields (defaults when empty)
    ranks: dict[str, int] | None = None  # explicit ranks (a hand-edited plan) instead of allocating per budget
    save: bool = False  # save every compressed model next to the run store (output_dir of its row)
    modules: list[str] = field(default_factory=list)  # imported first: they register methods outside lowrank.methods

    @property
    def settings(self) -> StatisticsSettings:
        return DEFAULT.with_(**self.statistics)

    @property
    def runs_total(self) -> int:
        return len(self.methods) * len(self.budgets) + int(self.dense)

    def validate(self) -> SweepSpec:
        if not self.methods:
            raise ValueError("choose at least one method")
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"cannot import {module}, which registers a method of this sweep: {err}") from err
        unknown = sorted(set(self.methods) - set(available_methods()))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
        if not self.budgets:
            raise ValueError("choose at least one budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
                raise ValueError(f"a budget is a kept fraction in (0, 1], got {budget!r}")
        if self.ranks is None:
            get_strategy(self.strategy)
        else:
            if len(self.budgets) != 1:
                raise ValueError("a sweep with explicit ranks has one budget (the plan's kept fraction)")
            if not self.ranks:
                raise ValueError("the plan keeps every layer dense: nothing to factorize")
            for name, rank in self.ranks.items():
                if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                    raise ValueError(f"rank of {name} must be a positive integer, got {rank!r}")
        extra = sorted(set(self.options) - set(self.methods))
        if extra:
            raise ValueError(f"options given for method(s) not in the sweep: {extra}")
        if self.eval_limit is not None and int(self.eval_limit) < 1:
            raise ValueError(f"eval_limit must be a positive number of batches or None, got {self.eval_limit}")
        if int(self.align) < 1:
            raise ValueError(f"align must be a positive integer, got {self.align}")
        _ = self.settings  # raises for bad statistics settings
        return self

    def needs(self) -> tuple[str, ...]:
        """Statistic kinds the sweep's methods and strategy need."""
        return needs_for(self.methods, None if self.ranks is not None else self.strategy)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SweepSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sweep field(s) {unknown}")
        return cls(**data)


class _SweepProgress:
    """Maps work units onto the sweep's progress in [0, 1] and writes it at most every ``interval`` seconds."""

    def __init__(self, store: RunStore, sweep_id: int, units: int, interval: float = 0.5):
        self.store, self.sweep_id, self.units, self.interval = store, sweep_id, max(1, units), interval
        self.last = 0.0

    def write(self, fraction: float, message: str, force: bool = False, **fields) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.store.update_sweep(self.sweep_id, progress=min(1.0, fraction), message=message, **fields)
            self.last = now

    def unit(self, index: int, label: str, **fields) -> Progress:
        """Start work unit ``index`` (writes ``fields`` too); returns the unit's progress callback."""

        def progress(done: int, total: int, message: str = "") -> None:
            inner = done / total if total else 1.0
            self.write((index + inner) / self.units, f"{label}: {message}" if message else label)

        self.write(index / self.units, label, force=True, **fields)
        return stoppable(progress)


class _Heartbeat(Heartbeat):
    """While a sweep runs: writes its row's ``updated`` time every ``interval`` seconds, and stops the sweep when
    the row asks for it or is no longer ``running`` (another host declared it stale)."""

    def __init__(self, store: RunStore, sweep_id: int, interval: float = HEARTBEAT_S):
        def beat() -> bool:
            row = store.get_sweep(sweep_id)
            if row["status"] != "running" or str(row.get("error") or "").startswith(STOP_REQUEST):
                return False
            store.update_sweep(sweep_id)  # only `updated`: the heartbeat
            return True

        super().__init__(beat, f"sweep-{sweep_id}-heartbeat", interval)


def run_sweep(spec: SweepSpec, store: RunStore, sweep_id: int) -> dict:
    """Run ``spec`` in this process, recording every run with ``sweep_id``; returns counts of done / failed runs
    (runs found in the store with the same key count as done and are not run again).

    The sweep row ends ``done`` (even when single runs failed: they are recorded as failed),
    ``failed`` (the model, task or Fisher information could not be obtained) or ``interrupted``.
    """
    counts = {"done": 0, "failed": 0}
    reused = []
    try:
        with _Heartbeat(store, sweep_id):
            _run_units(spec, store, sweep_id, counts, reused)
            check_stop()
        summary = (
            f"{counts['done']} run(s) done"
            + (f" ({len(reused)} already stored)" if reused else "")
            + (f", {counts['failed']} failed" if counts["failed"] else "")
        )
        store.update_sweep(sweep_id, runs_done=counts["done"] + counts["failed"])
        store.end_sweep(sweep_id, "done", message=summary)
        return counts
    except Exception as err:
        store.end_sweep(sweep_id, "failed", error=f"{type(err).__name__}: {err}", message="failed")
        raise
    except BaseException as err:
        store.end_sweep(sweep_id, "interrupted", error=f"interrupted ({type(err).__name__})", message="interrupted")
        raise


def _run_units(spec: SweepSpec, store: RunStore, sweep_id: int, counts: dict, reused: list) -> None:
    spec.validate()
    task = load_task(spec.task)
    loaded = load_model(spec.model, task=task)
    check_task_fits(loaded.name, loaded.kind, task.kind, spec.task)
    needs = spec.needs()
    bar = _SweepProgress(store, sweep_id, spec.runs_total + int(bool(needs)))
    unit = 0
    stats = {}
    if needs:
        stats = statistics_for(loaded, task, needs, spec.settings, progress=bar.unit(unit, "statistics"))
        unit += 1
    common = {"sweep_id": sweep_id, "align": spec.align}
    if spec.dense:
        dense_reference(
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
        plan, plan_error = (_Ranks(dict(spec.ranks)) if spec.ranks is not None else None), None
        for method in spec.methods:
            progress = bar.unit(unit, f"{method} at {budget:.0%}", runs_done=counts["done"] + counts["failed"])
            unit += 1
            try:
                if plan is None and plan_error is None:
                    try:
                        plan = allocate(
                            loaded,
                            float(budget),
                            spec.strategy,
                            stats=stats,
                            align=spec.align,
                            task=task,
                            progress=scaled(progress, 0.0, 0.05),
                        )
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
                )
                counts["done"] += 1
                if spec.save:
                    _save(store, result, method)
            except Exception:  # recorded as failed by execute_run; the other runs go on
                counts["failed"] += 1


@dataclass
class _Ranks:
    """Explicit ranks standing in for an allocated plan."""

    ranks: dict[str, int]


def _save(store: RunStore, result, method: str) -> None:
    """Save a run's compressed model and record where (a failure to save is noted on the run, which stays done)."""
    folder = output_folder(store, result.model.name, method, result.run_id)
    try:
        save_compressed(result.model, folder)
    except (OSError, ValueError, RuntimeError) as err:
        store.update_run(result.run_id, error=f"not saved: {type(err).__name__}: {err}")
    else:
        store.update_run(result.run_id, output_dir=str(folder))


def plugin_modules(methods) -> list[str]:
    """Modules outside ``lowrank`` that registered any of ``methods`` (a worker imports them first)."""
    modules = {get_method(m).fn.__module__ for m in methods}
    return sorted(m for m in modules if m and m != "__main__" and m.split(".")[0] != "lowrank")


def _record_failure(
    store: RunStore, loaded, spec: SweepSpec, method: str, budget: float, common: dict, error: Exception
):
    """A failed row for a run that could not start (e.g. a budget below the smallest possible plan)."""
    row = {
        **run_fields(loaded, spec.task, spec.split, spec.eval_limit),
        **common,
        "method": method,
        "strategy": spec.strategy,
        "budget": float(budget),
        "options": spec.options.get(method) or {},
        "solver": (spec.options.get(method) or {}).get("solver"),
    }
    run_id = store.start_run(**row)
    store.fail_run(run_id, f"{type(error).__name__}: {error}")


def log_path(store: RunStore, sweep_id: int) -> Path:
    return store.path.parent / "sweeps" / f"sweep-{sweep_id}.log"


def start_sweep(spec: SweepSpec, store: RunStore | None = None) -> int:
    """Validate ``spec``, record the sweep and run it in a detached process; returns the sweep id at once.

    Methods registered outside :mod:`lowrank.methods` travel as the modules that registered them
    (:func:`plugin_modules`), which the worker imports; they must be importable there (``PYTHONPATH``)."""
    spec.validate()
    spec.modules = sorted(set(spec.modules) | set(plugin_modules(spec.methods)))
    store = store or RunStore()
    sweep_id = store.create_sweep(spec.to_dict(), label=spec.label, runs_total=spec.runs_total)
    _launch(store, sweep_id)
    return sweep_id


def resume_sweep(store: RunStore, sweep_id: int) -> int:
    """Run a sweep that ended (interrupted, failed, or done with failed runs) again in a detached process,
    under the same id: the runs it already stored are not run again. Returns ``sweep_id``."""
    reap_stale(store)
    sweep = store.get_sweep(sweep_id)
    if sweep["status"] == "running":
        raise ValueError(f"sweep {sweep_id} is still running")
    SweepSpec.from_dict(sweep["spec"]).validate()
    pid = os.getpid()  # owned by this process until the worker claims it: a reader never sees a dead owner
    store.update_sweep(
        sweep_id,
        status="running",
        finished=None,
        error=None,
        progress=0.0,
        message="resuming",
        host=socket.gethostname(),
        pid=pid,
        pid_started=process_started(pid),
    )
    _launch(store, sweep_id)
    return sweep_id


def _launch(store: RunStore, sweep_id: int) -> None:
    """Start the detached worker process of a recorded sweep and make it the sweep's owner."""
    pid = spawn(["--db", str(store.path), "--sweep", str(sweep_id)], log_path(store, sweep_id))
    store.claim_sweep(sweep_id, pid)


def _end_lost(store: RunStore, sweep: dict, reason: str) -> None:
    """End a sweep whose owner is gone, and its runs still marked running, as ``interrupted``."""
    store.end_sweep(int(sweep["id"]), "interrupted", error=reason, message="interrupted")
    for run_id in store.runs(sweep_id=int(sweep["id"]), status="running")["id"]:
        store.fail_run(int(run_id), reason, "interrupted")


def reap_stale(store: RunStore, stale_after: float = STALE_S) -> list[int]:
    """End ``interrupted`` every running sweep of another host whose heartbeat is older than ``stale_after``
    seconds (with its running runs); returns their ids. Sweeps of this host are reaped by process id."""
    host, now, ended = socket.gethostname(), time.time(), []
    for sweep_id in store.sweeps(status="running")["id"]:
        sweep = store.get_sweep(int(sweep_id))
        age = heartbeat_age(sweep, now)
        # a live owner answers a stop request within a heartbeat: after a few, it is gone
        limit = (
            min(stale_after, 3 * HEARTBEAT_S) if str(sweep.get("error") or "").startswith(STOP_REQUEST) else stale_after
        )
        if sweep["status"] == "running" and sweep.get("host") != host and age > limit:
            _end_lost(store, sweep, f"its owner on host {sweep.get('host')} stopped reporting {age:.0f} s ago")
            ended.append(int(sweep_id))
    return ended


def running_sweeps(store: RunStore, stale_after: float = STALE_S):
    """The running sweeps (a DataFrame, newest first), after :func:`reap_stale`."""
    reap_stale(store, stale_after)
    return store.sweeps(status="running")


def cancel_sweep(store: RunStore, sweep_id: int) -> bool:
    """Stop a running sweep; False when it is not running.

    This host's: SIGTERM to its process. Another host's: a stop request in its row, which the owner's
    heartbeat reads within :data:`HEARTBEAT_S` seconds; when the heartbeat has already missed a few beats
    the owner is taken as gone and the sweep ends ``interrupted`` at once."""
    reap_stale(store)
    sweep = store.get_sweep(sweep_id)
    if sweep["status"] != "running":
        return False
    if sweep.get("host") == socket.gethostname():
        if not process_alive(sweep["pid"], sweep["pid_started"]):
            return False
        os.kill(int(sweep["pid"]), signal.SIGTERM)
        return True
    age = heartbeat_age(sweep, time.time())
    if age > 3 * HEARTBEAT_S:
        _end_lost(
            store,
            sweep,
            f"stopped from {socket.gethostname()}: its owner on host {sweep.get('host')} "
            f"stopped reporting {age:.0f} s ago",
        )
    else:
        store.update_sweep(sweep_id, error=f"{STOP_REQUEST} from {socket.gethostname()}")
    return True
