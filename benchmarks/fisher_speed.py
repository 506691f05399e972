"""Fisher stage before and after batching: the same sample through today's batched collector and
through the per-example loop of an earlier checkout (``--old``: a worktree of commit 122adb6, whose
``lowrank.fisher.estimate_fisher`` multiplies one example's ``g_n^T x_n`` at a time).

Each side runs in its own subprocess (its own ``lowrank`` on ``sys.path``, its own peak RSS), on the
same model, task, batches, sequence length, labels and seed, without cache. The table gives the
seconds, the speed-up and the largest relative difference between the two Fisher maps.

    git worktree add /tmp/lowrank-old 122adb6
    python benchmarks/fisher_speed.py --old /tmp/lowrank-old --model smollm2-135m --task lee --batches 4
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parser, write
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

# One side: load, time estimate_fisher, save the maps (safetensors) and print seconds + peak RSS as JSON.
NEW = """
import json, sys, time
from safetensors.torch import save_file
import lowrank
from lowrank.statistics import StatisticsSettings, select, statistics_for
from lowrank.threads import set_threads
set_threads()
model, task, batches, length, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
loaded = lowrank.load_model(model)
start = time.perf_counter()
fisher = select(statistics_for(loaded, task, ("fisher",), StatisticsSettings(num_batches=batches, batch_size=16, max_length=length), use_cache=False), "fisher")
seconds = time.perf_counter() - start
save_file({k: v.contiguous() for k, v in fisher.items()}, out)
print(json.dumps({"seconds": seconds}))
"""
OLD = """
import json, sys, time
from safetensors.torch import save_file
import lowrank
from lowrank.fisher import estimate_fisher
model, task, batches, length, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
loaded = lowrank.load_model(model)
start = time.perf_counter()
fisher = estimate_fisher(loaded, task, num_batches=batches, batch_size=16, max_length=length, use_cache=False)
seconds = time.perf_counter() - start
save_file({k: v.contiguous() for k, v in fisher.items()}, out)
print(json.dumps({"seconds": seconds}))
"""


def side(code: str, root: Path, args, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, args.model, args.task, str(args.batches), str(args.max_length), str(out)],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_relative_difference(a: Path, b: Path) -> float:
    new, old = load_file(str(a)), load_file(str(b))
    return max(float((new[k].double() - old[k].double()).abs().max() / old[k].double().abs().max()) for k in old)


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="smollm2-135m", task="lee")
    p.add_argument("--old", required=True, help="a checkout of the per-example code (commit 122adb6)")
    p.add_argument("--batches", type=int, default=4, help="calibration batches of 16 (same for both sides)")
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        new_file, old_file = Path(folder) / "new.safetensors", Path(folder) / "old.safetensors"
        new = side(NEW, ROOT, args, new_file)
        print(f"batched: {new['seconds']:.1f} s", flush=True)
        old = side(OLD, Path(args.old).resolve(), args, old_file)
        print(f"per-example: {old['seconds']:.1f} s", flush=True)
        difference = max_relative_difference(new_file, old_file)
    rows = [
        {
            "model": args.model,
            "task": args.task,
            "examples": 16 * args.batches,
            "max_length": args.max_length,
            "per_example_s": old["seconds"],
            "batched_s": new["seconds"],
            "speedup": old["seconds"] / new["seconds"],
            "max_relative_difference": difference,
        }
    ]
    write(f"fisher_speed_{args.model}", args, rows)


if __name__ == "__main__":
    main()
