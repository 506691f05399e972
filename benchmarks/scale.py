"""Scale: wall time of each stage and peak memory, in memory vs layer-sequential (one decoder block at a time).

For each method and mode a fresh subprocess (so each configuration's peak RSS is its own) runs the
whole pipeline at one kept fraction on ``--model`` / ``--task``:

* ``memory``: ``load_model`` -> ``statistics_for`` (uncached) -> ``compress`` -> ``evaluate``;
* ``sequential``: ``compress_sequential`` (statistics and factorization in one streaming pass,
  written to a temporary folder; ``statistics_s`` is its time outside the factorizations, including
  block loading and writing) -> ``load_compressed`` -> ``evaluate``.

Each row gives the stages' wall times, the perplexity, and the peak RSS (VmHWM on Linux, else
``ru_maxrss``) after each stage as a multiple of the model's float32 size (estimated from its
config): ``peak_x_compress`` is the peak up to the compressed model, ``peak_x`` the overall one
(evaluation loads the compressed model whole).

    python benchmarks/scale.py --model smollm2-135m --task lee --keep 0.6 --fisher-batches 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser, write

import lowrank
from lowrank.data.tasks import hub_reachable
from lowrank.models.loading import estimate_parameters, load_config
from lowrank.models.packaged import resolve_source
from lowrank.statistics import StatisticsSettings, statistics_for

MODES = ("memory", "sequential")


def peak_bytes() -> int:
    """This process's peak RSS: VmHWM (not inherited across exec, unlike ``ru_maxrss`` on Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def float32_bytes(name: str) -> int:
    source = resolve_source(name)
    return 4 * estimate_parameters(load_config(source, name, Path(source).exists() or not hub_reachable()))


def method_options(method: str, args) -> dict:
    return {"max_iters": args.tfwsvd_iters} if method == "tfwsvd" and args.tfwsvd_iters is not None else {}


def run_configuration(args) -> dict:
    """One pipeline in this process; returns its row."""
    method, mode = args.worker
    settings = StatisticsSettings(num_batches=args.fisher_batches, batch_size=16)
    options = method_options(method, args)
    size = float32_bytes(args.model)
    row = {"method": method, "mode": mode, "keep": args.keep, "model_float32_bytes": size}
    marks = {}

    def stage(name: str, start: float) -> None:
        row[f"{name}_s"] = time.perf_counter() - start
        marks[name] = peak_bytes()

    if mode == "memory":
        start = time.perf_counter()
        loaded = lowrank.load_model(args.model, device=args.device)
        stage("load", start)
        start = time.perf_counter()
        stats = statistics_for(loaded, args.task, lowrank.get_method(method).needs, settings, use_cache=False)
        stage("statistics", start)
        start = time.perf_counter()
        small = lowrank.compress(loaded, args.keep, method=method, stats=stats, **options)
        stage("compress", start)
        del loaded, stats
    else:
        with tempfile.TemporaryDirectory(prefix="scale-") as folder:
            start = time.perf_counter()
            out = lowrank.compress_sequential(
                args.model, args.keep, method, Path(folder) / "out", args.task, settings, device=args.device, **options
            )
            total = time.perf_counter() - start
            marks["compress"] = peak_bytes()
            start = time.perf_counter()
            small = lowrank.load_compressed(out, device=args.device)
            stage("load", start)
        factorize = sum(small.model.lowrank_info.seconds.values())
        row |= {"statistics_s": total - factorize, "compress_s": factorize}
    start = time.perf_counter()
    result = lowrank.evaluate(small, args.task, limit=args.limit, latency=False)
    stage("evaluate", start)
    row |= {
        "perplexity": result.value,
        "loss": result.loss,
        "peak_x_compress": max(v for k, v in marks.items() if k != "evaluate") / size,
        "peak_x": max(marks.values()) / size,
    }
    row |= {f"peak_x_after_{k}": v / size for k, v in marks.items()}
    return row


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="smollm2-135m", task="lee")
    p.add_argument("--keep", type=float, default=0.6, help="kept fraction of each layer's parameters (default 0.6)")
    p.add_argument("--methods", nargs="+", default=["svd_llm", "tfwsvd"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--fisher-batches", type=int, default=32, help="calibration batches of 16 for every statistic")
    p.add_argument("--tfwsvd-iters", type=int, help="iteration cap of tfwsvd (default: the solver's)")
    p.add_argument(
        "--worker", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS
    )  # one configuration, in this process
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_configuration(args)))
        return
    rows = []
    for method in args.methods:
        for mode in args.modes:
            done = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--worker", method, mode],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                rows.append({"method": method, "mode": mode, "error": done.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write("scale", args, rows)


if __name__ == "__main__":
    main()
