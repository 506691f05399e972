"""``python -m lowrank.experiments.worker --db FILE (--sweep ID | --build ID | --measurement ID)``: the process that
runs a recorded job.

It claims the job's row (:mod:`lowrank.experiments.jobs`), runs it, and exits 0 when it is done, 1 when it failed and
130 when it was interrupted (SIGTERM raises ``KeyboardInterrupt``, :func:`lowrank.experiments.stop.interrupt`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from lowrank.experiments.build import run_build
from lowrank.experiments.jobs import Job
from lowrank.experiments.measure import run_measurement
from lowrank.experiments.stop import interrupt
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import run_sweep
from lowrank.experiments.sweep_spec import SweepSpec
from lowrank.threads import set_threads


def _run_sweep(store: RunStore, sweep_id: int) -> dict:
    return run_sweep(SweepSpec.from_dict(store.get_sweep(sweep_id)["spec"]), store, sweep_id)


RUNNERS = {"sweeps": _run_sweep, "builds": run_build, "measurements": run_measurement}  # table -> its worker's part


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowrank.experiments.worker",
        description="Run a recorded sweep (started by start_sweep), build (start_build) or measurement "
        "(start_measurement).",
    )
    parser.add_argument("--db", required=True, help="the run store (SQLite file)")
    which = parser.add_mutually_exclusive_group(required=True)
    for table in RUNNERS:  # --sweep, --build, --measurement: the kind of Job.launch
        which.add_argument(f"--{table[:-1]}", type=int, help=f"id of the {table[:-1]} row to run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    set_threads()
    store = RunStore(args.db)
    table = next(t for t in RUNNERS if getattr(args, t[:-1]) is not None)
    job = Job(store, table, getattr(args, table[:-1]))
    name = f"{job.kind} {job.id}"
    try:
        job.claim(os.getpid())
        result = RUNNERS[table](store, job.id)
    except KeyboardInterrupt:
        print(f"{name} interrupted", flush=True)
        return 130
    except Exception as err:
        print(f"{name} failed: {type(err).__name__}: {err}", flush=True)
        return 1
    print(f"{name}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
