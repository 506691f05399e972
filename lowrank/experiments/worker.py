"""``python -m lowrank.experiments.worker --db FILE --sweep ID``: the detached process that runs a recorded sweep."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from lowrank.experiments.stop import interrupt
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import SweepSpec, run_sweep
from lowrank.threads import set_threads


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowrank.experiments.worker", description="Run a recorded sweep (started by start_sweep).")
    parser.add_argument("--db", required=True, help="the run store (SQLite file)")
    parser.add_argument("--sweep", type=int, required=True, help="id of the sweep row to run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    set_threads()
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
