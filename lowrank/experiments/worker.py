"""``python -m lowrank.experiments.worker --db FILE (--sweep ID | --build ID)``: the detached process that runs a
recorded sweep or model build."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from lowrank.experiments.build import run_build
from lowrank.experiments.stop import interrupt
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import SweepSpec, run_sweep
from lowrank.threads import set_threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lowrank.experiments.worker",
        description="Run a recorded sweep (started by start_sweep) or build (start_build).",
    )
    parser.add_argument("--db", required=True, help="the run store (SQLite file)")
    job = parser.add_mutually_exclusive_group(required=True)
    job.add_argument("--sweep", type=int, help="id of the sweep row to run")
    job.add_argument("--build", type=int, help="id of the build row to run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    set_threads()
    store = RunStore(args.db)
    name = f"sweep {args.sweep}" if args.sweep is not None else f"build {args.build}"
    try:
        if args.sweep is not None:
            store.claim_sweep(args.sweep, os.getpid())
            result = run_sweep(SweepSpec.from_dict(store.get_sweep(args.sweep)["spec"]), store, args.sweep)
        else:
            store.claim_build(args.build, os.getpid())
            result = run_build(store, args.build)
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
