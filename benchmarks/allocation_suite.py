"""Rank allocation across the suite: every strategy against uniform, with the same method, on every task.

For every suite task with its fine-tuned MiniLM (``lowrank.data.tasks.SUITE``; unbuilt models are
skipped with their build command), every budget (``--budgets``, kept fractions of the
compressible parameters, default 30/50/70%) and every registered strategy (uniform included,
all through ``lowrank.allocation.allocate`` with the same ``--align``), each method
(``--methods``, default svd, fwsvd, tfwsvd) compresses the model with exactly the plan's ranks, no
fine-tuning, evaluated on ``--split``. Statistics: what the methods and strategies need plus
the Fisher for predicted losses, computed once per model (``lowrank.statistics.statistics_for``,
the library's statistics flags); each method sees only the statistics it declares
(``lowrank.statistics.restrict``).

Summary: per task x budget x method, each strategy's gain over uniform in accuracy points; per
strategy, in how many of those cases it beats / ties / loses to uniform, and its mean gain.

    python benchmarks/allocation_suite.py
    python benchmarks/allocation_suite.py --labels sampled --methods fwsvd
    python benchmarks/allocation_suite.py --tasks tweets --budgets 0.5 --methods svd --limit 1   # smoke
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from common import RESULTS, settings_tag, suite_models, suite_parser, write

import lowrank
from lowrank.allocation import allocate, available_strategies
from lowrank.cli.args import statistics_settings
from lowrank.needs import needs_for
from lowrank.statistics import restrict, statistics_for

METHODS = ("svd", "fwsvd", "tfwsvd")


def run_task(task_name: str, model: str, args, settings, strategies: list[str]) -> list[dict]:
    task = lowrank.load_task(task_name)
    loaded = lowrank.load_model(model, device=args.device)
    needs = tuple(dict.fromkeys(k for s in strategies for k in needs_for(args.methods, s, predict=True)))
    stats = statistics_for(loaded, task, needs, settings)
    dense = lowrank.evaluate(loaded, task, args.split, limit=args.limit, latency=False)
    rows = [
        {
            "task": task_name,
            "model": model,
            "budget": 1.0,
            "strategy": "dense",
            "method": "dense",
            "accuracy": dense.value,
            "loss": dense.loss,
        }
    ]
    for budget in args.budgets:
        for strategy in strategies:
            options = {"num_batches": args.calibration_batches} if strategy == "sensitivity" else {}
            start = time.perf_counter()
            plan = allocate(loaded, budget, strategy, align=args.align, stats=stats, task=task, **options)
            alloc_seconds = time.perf_counter() - start
            for method in args.methods:
                small = lowrank.compress(loaded, plan.ranks, method=method, stats=restrict(stats, needs_for([method])))
                result = lowrank.evaluate(small, task, args.split, limit=args.limit, latency=False)
                rows.append(
                    {
                        "task": task_name,
                        "model": model,
                        "budget": budget,
                        "strategy": strategy,
                        "method": method,
                        "accuracy": result.value,
                        "loss": result.loss,
                        "params": plan.params,
                        "used": plan.params / plan.budget,
                        "factorized": len(plan.ranks),
                        "predicted_loss": plan.predicted_loss,
                        "alloc_s": alloc_seconds,
                    }
                )
                print(f"{task_name} budget {budget} {strategy:14s} {method:7s} accuracy {result.value:.4f}", flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    frame = pd.DataFrame([r for r in rows if r["strategy"] != "dense"])
    gains = []
    for (task, budget, method), part in frame.groupby(["task", "budget", "method"], sort=False):
        by = dict(zip(part["strategy"], part["accuracy"]))
        if "uniform" in by:
            gains += [
                {
                    "task": task,
                    "budget": budget,
                    "method": method,
                    "strategy": s,
                    "uniform": by["uniform"],
                    "accuracy": v,
                    "gain_points": 100 * (v - by["uniform"]),
                }
                for s, v in by.items()
                if s != "uniform"
            ]
    per_strategy = {}
    for strategy in dict.fromkeys(g["strategy"] for g in gains):
        points = [g["gain_points"] for g in gains if g["strategy"] == strategy]
        per_strategy[strategy] = {
            "cases": len(points),
            "beats_uniform": sum(p > 0 for p in points),
            "ties": sum(p == 0 for p in points),
            "loses": sum(p < 0 for p in points),
            "mean_gain_points": float(np.mean(points)),
            "median_gain_points": float(np.median(points)),
        }
    return {"gains_over_uniform": gains, "per_strategy": per_strategy}


def main() -> None:
    p = suite_parser(__doc__)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--strategies", nargs="+", default=None, help="default: every registered strategy")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--align", type=int, default=8)
    p.add_argument("--calibration-batches", type=int, default=4, help="batches of the sensitivity strategy (default 4)")
    args = p.parse_args()
    strategies = args.strategies or available_strategies()
    if "uniform" not in strategies:
        strategies = ["uniform", *strategies]
    settings = statistics_settings(args)
    rows = []
    for task, model in suite_models(args.tasks):
        rows += run_task(task, model, args, settings, strategies)
    if not rows:
        raise SystemExit("no suite model is built: nothing to run")
    summary = summarize(rows)
    frame = pd.DataFrame(rows)
    for task, part in frame.groupby("task", sort=False):
        dense = part.loc[part["strategy"] == "dense", "accuracy"].iloc[0]
        print(f"\n{task}, dense accuracy {dense:.4f}:")
        print(
            part[part["strategy"] != "dense"]
            .pivot_table(index=["budget", "method"], columns="strategy", values="accuracy", sort=False)
            .to_string(float_format=lambda v: f"{v:.4f}")
        )
    print("\nagainst uniform (accuracy points), over task x budget x method:")
    for strategy, s in summary["per_strategy"].items():
        print(
            f"  {strategy:14s} beats {s['beats_uniform']}/{s['cases']}, ties {s['ties']}, loses {s['loses']}; "
            f"mean {s['mean_gain_points']:+.2f}, median {s['median_gain_points']:+.2f}"
        )
    args.out = args.out or str(RESULTS / f"allocation_suite_{settings_tag(settings)}.json")
    write(
        "allocation_suite", args, rows, {"settings": settings.to_dict(), "strategies": strategies, "summary": summary}
    )


if __name__ == "__main__":
    main()
