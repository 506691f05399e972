"""``python -m lowrank.experiments.worker --db FILE (--sweep ID | --build ID)``: the process that runs a recorded job.

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
from lowrank.experiments.stop import interrupt
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import run_sweep
from lowrank.experiments.sweep_spec import SweepSpec
from lowrank.threads import set_threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowrank.experiments.worker",
        description="Run a recorded sweep (started by start_sweep) or build (start_build).",
    )
    parser.add_argument("--db", required=True, help="the run store (SQLite file)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", type=int, help="id of the sweep row to run")
    which.add_argument("--build", type=int, help="id of the build row to run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    set_threads()
    store = RunStore(args.db)
    job = Job(store, "sweeps", args.sweep) if args.sweep is not None else Job(store, "builds", args.build)
    name = f"{job.kind} {job.id}"
    try:
        job.claim(os.getpid())
        if job.table == "sweeps":
            result = run_sweep(SweepSpec.from_dict(job.row()["spec"]), store, job.id)
        else:
            result = run_build(store, job.id)
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
