"""Recorded runs and background sweeps (methods x budgets under one allocation strategy).

* :func:`execute_run`: compress a loaded model with one method at given ranks, evaluate it
  and record everything in the :class:`~lowrank.runs.RunStore` (a failure or an interruption
  leaves its row ``failed`` / ``interrupted``; nothing is written to disk but the row).
* :func:`run_sweep`: for every budget, allocate ranks with the strategy, then run every
  method on them; plus one dense reference run (reused from the store when one with the
  same weights, task and evaluation settings exists). Progress and a message go to the
  sweep's row, throttled to a few writes per second.
* :func:`start_sweep`: the same in a detached background process
  (``python -m lowrank.sweep --db FILE --sweep ID``), so a closed browser tab or a
  restarted dashboard loses nothing; :func:`cancel_sweep` stops it (SIGTERM: the current
  run and the sweep end ``interrupted``).

Weighted methods and Fisher-based strategies get the empirical Fisher information
(:func:`lowrank.fisher.estimate_fisher` with :data:`FISHER_SETTINGS`, cached on disk).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .progress import Progress, report, scaled
from .runs import RunStore, process_alive

FISHER_SETTINGS = {"num_batches": 32, "batch_size": 16}
DENSE = "dense"


@dataclass
class SweepSpec:
    """What a sweep runs: ``methods`` x ``budgets`` (kept fractions of the compressible parameters)."""

    model: str
    task: str
    methods: list[str]
    budgets: list[float]
    strategy: str = "uniform"
    options: dict[str, dict] = field(default_factory=dict)  # per method, e.g. {"tfwsvd": {"solver": "em"}}
    align: int = 8
    split: str = "validation"
    eval_limit: Optional[int] = None  # evaluate on at most this many batches (None: the whole split)
    dense: bool = True  # also record the dense reference
    label: str = ""

    @property
    def runs_total(self) -> int:
        return len(self.methods) * len(self.budgets) + int(self.dense)

    def validate(self) -> "SweepSpec":
        from .allocate import get_strategy
        from .factorize import available_methods

        if not self.methods:
            raise ValueError("choose at least one method")
        unknown = sorted(set(self.methods) - set(available_methods()))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
        if not self.budgets:
            raise ValueError("choose at least one budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
                raise ValueError(f"a budget is a kept fraction in (0, 1], got {budget!r}")
        get_strategy(self.strategy)
        extra = sorted(set(self.options) - set(self.methods))
        if extra:
            raise ValueError(f"options given for method(s) not in the sweep: {extra}")
        if self.eval_limit is not None and int(self.eval_limit) < 1:
            raise ValueError(f"eval_limit must be a positive number of batches or None, got {self.eval_limit}")
        if int(self.align) < 1:
            raise ValueError(f"align must be a positive integer, got {self.align}")
        return self

    def needs_importance(self) -> bool:
        from .allocate import get_strategy
        from .factorize import get_method

        return get_strategy(self.strategy).needs_importance or any(get_method(m).needs_importance for m in self.methods)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sweep field(s) {unknown}")
        return cls(**data)


@dataclass
class RunResult:
    run_id: int
    model: object  # the compressed LoadedModel (the dense one for the dense reference)
    evaluation: object  # lowrank.Evaluation
    seconds: float


def run_fields(loaded, task_key: str, split: str, eval_limit: Optional[int]) -> dict:
    """Row fields identifying a model, its weights and the evaluation settings."""
    from .compress import linear_shapes
    from .fisher import weights_fingerprint

    return {"model": loaded.name, "fingerprint": weights_fingerprint(loaded.model), "task": task_key, "split": split,
            "eval_limit": eval_limit, "dense_params_linear": sum(o * i for o, i in linear_shapes(loaded).values())}


def execute_run(store: RunStore, loaded, task, task_key: str, method: str, ranks: dict[str, int], *,
                importance=None, options: Optional[dict] = None, split: str = "validation",
                eval_limit: Optional[int] = None, fields: Optional[dict] = None,
                progress: Optional[Progress] = None) -> RunResult:
    """Compress ``loaded`` with ``method`` at ``ranks`` (``method="dense"``: no compression), evaluate, record.

    ``fields`` adds row fields (strategy, budget, align, sweep_id...). Raises what compression or
    evaluation raises, after marking the row failed / interrupted.
    """
    from .compress import compress
    from .evaluate import evaluate

    options = dict(options or {})
    row = {**run_fields(loaded, task_key, split, eval_limit), "method": method, "solver": options.get("solver"),
           "ranks": ranks, "options": options, **(fields or {})}
    start = time.perf_counter()
    with store.record(**row) as run:
        if method == DENSE:
            model, factorize_s = loaded, 0.0
            evaluation = evaluate(model, task, split, limit=eval_limit, progress=progress)
        else:
            model = compress(loaded, ranks, method, importance=importance, progress=scaled(progress, 0.0, 0.3), **options)
            factorize_s = sum(model.model.lowrank_info.seconds.values())
            evaluation = evaluate(model, task, split, limit=eval_limit, progress=scaled(progress, 0.3, 1.0))
        seconds = time.perf_counter() - start
        run.finish(metric=evaluation.metric, value=evaluation.value, loss=evaluation.loss, examples=evaluation.examples,
                   params_total=evaluation.params_total, params_linear=evaluation.params_linear,
                   kept_fraction=evaluation.params_linear / row["dense_params_linear"],
                   size_bytes=evaluation.size_bytes, latency_ms_b1=evaluation.latency_ms_b1,
                   latency_ms_b32=evaluation.latency_ms_b32, factorize_s=factorize_s, wall_s=seconds)
    return RunResult(run.id, model, evaluation, seconds)


def dense_reference(store: RunStore, loaded, task, task_key: str, split: str = "validation",
                    eval_limit: Optional[int] = None, fields: Optional[dict] = None,
                    progress: Optional[Progress] = None) -> dict:
    """The stored dense run for these weights, task and settings; evaluated and recorded if there is none."""
    key = run_fields(loaded, task_key, split, eval_limit)
    found = store.find_run(method=DENSE, fingerprint=key["fingerprint"], task=task_key, split=split, eval_limit=eval_limit)
    if found is not None:
        report(progress, 1, 1, "dense reference from the run store")
        return found
    result = execute_run(store, loaded, task, task_key, DENSE, {}, split=split, eval_limit=eval_limit,
                         fields={"budget": 1.0, **(fields or {})}, progress=progress)
    return store.get_run(result.run_id)


class _SweepProgress:
    """Maps work units onto the sweep's progress in [0, 1] and writes it at most every ``interval`` seconds."""

    def __init__(self, store: RunStore, sweep_id: int, units: int, interval: float = 0.5):
        self.store, self.sweep_id, self.units, self.interval = store, sweep_id, max(1, units), interval
        self.last = 0.0

    def write(self, fraction: float, message: str, force: bool = False, **fields) -> None:
        check_stop()
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
        return progress


def run_sweep(spec: SweepSpec, store: RunStore, sweep_id: int) -> dict:
    """Run ``spec`` in this process, recording every run with ``sweep_id``; returns counts of done / failed runs.

    The sweep row ends ``done`` (even when single runs failed: they are recorded as failed),
    ``failed`` (the model, task or Fisher information could not be obtained) or ``interrupted``.
    """
    from .allocate import allocate
    from .data import load_task
    from .fisher import estimate_fisher
    from .models import load_model

    counts = {"done": 0, "failed": 0}
    try:
        spec.validate()
        task = load_task(spec.task)
        loaded = load_model(spec.model, task=task)
        need_fisher = spec.needs_importance()
        bar = _SweepProgress(store, sweep_id, spec.runs_total + int(need_fisher))
        unit = 0
        importance = None
        if need_fisher:
            importance = estimate_fisher(loaded, task, progress=bar.unit(unit, "Fisher information"), **FISHER_SETTINGS)
            unit += 1
        common = {"sweep_id": sweep_id, "align": spec.align}
        if spec.dense:
            dense_reference(store, loaded, task, spec.task, spec.split, spec.eval_limit, common, bar.unit(unit, "dense reference"))
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
                            plan = allocate(loaded, float(budget), spec.strategy, importance=importance, align=spec.align,
                                            task=task, progress=scaled(progress, 0.0, 0.05))
                        except ValueError as err:
                            plan_error = err
                    if plan_error is not None:
                        _record_failure(store, loaded, spec, method, budget, common, plan_error)
                        counts["failed"] += 1
                        continue
                    execute_run(store, loaded, task, spec.task, method, plan.ranks, importance=importance,
                                options=spec.options.get(method), split=spec.split, eval_limit=spec.eval_limit,
                                fields={**common, "strategy": spec.strategy, "budget": float(budget)},
                                progress=scaled(progress, 0.05, 1.0))
                    counts["done"] += 1
                except Exception:  # recorded as failed by execute_run; the other runs go on
                    counts["failed"] += 1
        check_stop()
        summary = f"{counts['done']} run(s) done" + (f", {counts['failed']} failed" if counts["failed"] else "")
        store.update_sweep(sweep_id, runs_done=counts["done"] + counts["failed"])
        store.end_sweep(sweep_id, "done", message=summary)
        return counts
    except Exception as err:
        store.end_sweep(sweep_id, "failed", error=f"{type(err).__name__}: {err}", message="failed")
        raise
    except BaseException as err:
        store.end_sweep(sweep_id, "interrupted", error=f"interrupted ({type(err).__name__})", message="interrupted")
        raise


def _record_failure(store: RunStore, loaded, spec: SweepSpec, method: str, budget: float, common: dict, error: Exception):
    """A failed row for a run that could not start (e.g. a budget below the smallest possible plan)."""
    row = {**run_fields(loaded, spec.task, spec.split, spec.eval_limit), **common, "method": method,
           "strategy": spec.strategy, "budget": float(budget), "options": spec.options.get(method) or {},
           "solver": (spec.options.get(method) or {}).get("solver")}
    run_id = store.start_run(**row)
    store.fail_run(run_id, f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------- background process


def log_path(store: RunStore, sweep_id: int) -> Path:
    return store.path.parent / "sweeps" / f"sweep-{sweep_id}.log"


def start_sweep(spec: SweepSpec, store: Optional[RunStore] = None) -> int:
    """Validate ``spec``, record the sweep and run it in a detached process; returns the sweep id at once."""
    spec.validate()
    store = store or RunStore()
    sweep_id = store.create_sweep(spec.to_dict(), label=spec.label, runs_total=spec.runs_total)
    log = log_path(store, sweep_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    # busy-waiting OpenMP threads make MKL's SVD ~100x slower when the worker shares the cores with the dashboard
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lowrank.sweep", "--db", str(store.path), "--sweep", str(sweep_id)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    store.claim_sweep(sweep_id, proc.pid)
    threading.Thread(target=proc.wait, name=f"sweep-{sweep_id}-reaper", daemon=True).start()
    return sweep_id


def cancel_sweep(store: RunStore, sweep_id: int) -> bool:
    """Ask a running sweep's process to stop (SIGTERM); False when it is not running."""
    sweep = store.get_sweep(sweep_id)
    if sweep["status"] != "running" or not process_alive(sweep["pid"], sweep["pid_started"]):
        return False
    os.kill(int(sweep["pid"]), signal.SIGTERM)
    return True


_STOP = threading.Event()  # set by SIGTERM in the sweep's worker process


def _interrupt(signum, frame):
    _STOP.set()
    raise KeyboardInterrupt(f"signal {signum}")


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` when a stop was requested.

    The SIGTERM handler raises at once, but Python only prints an exception raised while a
    ``__del__`` or a C callback is running (``Exception ignored in ...``), so a signal landing
    there would be lost; the progress writes and the end of :func:`run_sweep` call this to
    notice it at the next progress tick.
    """
    if _STOP.is_set():
        raise KeyboardInterrupt("stop requested")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowrank.sweep", description="Run a recorded sweep (started by start_sweep).")
    parser.add_argument("--db", required=True, help="the run store (SQLite file)")
    parser.add_argument("--sweep", type=int, required=True, help="id of the sweep row to run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    store = RunStore(args.db)
    store.claim_sweep(args.sweep, os.getpid())
    spec = SweepSpec.from_dict(store.get_sweep(args.sweep)["spec"])
    try:
        counts = run_sweep(spec, store, args.sweep)
    except KeyboardInterrupt:
        print(f"sweep {args.sweep} interrupted", flush=True)
        return 130
    except Exception as err:
        print(f"sweep {args.sweep} failed: {type(err).__name__}: {err}", flush=True)
        return 1
    print(f"sweep {args.sweep}: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
