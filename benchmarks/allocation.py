"""Rank allocation: validation accuracy of minilm-rt under each allocation strategy, per method and budget.

For every budget (fraction of the compressible Linear parameters kept) and strategy,
``lowrank.allocation.allocate`` picks per-layer ranks (aligned to ``--align``); each factorization
method then compresses the model with exactly those ranks (no fine-tuning) and the
validation split is evaluated. Fisher information (for ``fisher_greedy``, the weighted
methods and the predicted losses) and the sensitivity measurements are computed once
(both cached on disk). ``--quick``: one budget, plain SVD only, a few evaluation batches, written to
``results/allocation_quick.json``.
"""

from __future__ import annotations

import time

from common import RESULTS, parser, write

import lowrank
from lowrank.allocation import (
    allocate,
    available_strategies,
    measure_sensitivity,
    sensitivity_cache_path,
    sensitivity_settings,
)
from lowrank.data.tasks import load_task
from lowrank.needs import needs_for
from lowrank.statistics import StatisticsSettings, is_cached, restrict, statistics_for

METHODS = ("svd", "fwsvd", "tfwsvd")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--strategies", nargs="+", default=None, help="default: every registered strategy")
    p.add_argument("--methods", nargs="+", default=None, help="default: svd, fwsvd, tfwsvd, those registered")
    p.add_argument("--align", type=int, default=8)
    p.add_argument("--fisher-batches", type=int, default=32)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="smoke run: budget 0.5, svd only, 4 evaluation batches")
    args = p.parse_args()
    if args.quick:
        args.budgets = [0.5]
        args.methods = args.methods or ["svd"]
        args.limit = args.limit or 4
        args.out = args.out or str(RESULTS / "allocation_quick.json")  # never overwrite the full results
    registered = lowrank.available_methods()
    methods = args.methods or [m for m in METHODS if m in registered]
    missing = [m for m in (args.methods or METHODS) if m not in registered]
    if missing:
        print(f"not registered, skipped: {', '.join(missing)}")
    methods = [m for m in methods if m in registered]
    strategies = args.strategies or available_strategies()

    task = load_task(args.task)
    loaded = lowrank.load_model(args.model, device=args.device)
    dense = lowrank.evaluate(loaded, task, limit=args.limit, latency=False)
    print(f"dense {args.model}: {dense.metric} {dense.value:.4f}")

    fisher_settings = StatisticsSettings(num_batches=args.fisher_batches, batch_size=16)
    needs = tuple(dict.fromkeys(k for s in strategies for k in needs_for(methods, s, predict=True)))
    fisher_cached = is_cached(loaded, task, needs, fisher_settings)
    start = time.perf_counter()
    stats = statistics_for(loaded, task, needs, fisher_settings)
    fisher_seconds = time.perf_counter() - start

    sensitivity = {}
    if "sensitivity" in strategies:
        sens_settings = sensitivity_settings(num_batches=args.calibration_batches)
        sensitivity["cached"] = sensitivity_cache_path(loaded, task, sens_settings).exists()
        start = time.perf_counter()
        measure_sensitivity(loaded, task, num_batches=args.calibration_batches)
        sensitivity["seconds"] = time.perf_counter() - start

    rows = []
    for budget in args.budgets:
        for strategy in strategies:
            options = {"num_batches": args.calibration_batches} if strategy == "sensitivity" else {}
            start = time.perf_counter()
            plan = allocate(loaded, budget, strategy, align=args.align, stats=stats, task=task, **options)
            alloc_seconds = time.perf_counter() - start
            for method in methods:
                start = time.perf_counter()
                small = lowrank.compress(loaded, plan.ranks, method=method, stats=restrict(stats, needs_for([method])))
                compress_seconds = time.perf_counter() - start
                result = lowrank.evaluate(small, task, limit=args.limit, latency=False)
                rows.append(
                    {
                        "budget": budget,
                        "strategy": strategy,
                        "method": method,
                        result.metric: result.value,
                        "loss": result.loss,
                        "params": plan.params,
                        "used": plan.params / plan.budget,
                        "factorized": len(plan.ranks),
                        "dense": len(plan.layers) - len(plan.ranks),
                        "predicted_loss": plan.predicted_loss,
                        "alloc_s": alloc_seconds,
                        "compress_s": compress_seconds,
                    }
                )
                print(f"budget {budget} {strategy:14s} {method:7s} {result.metric} {result.value:.4f}", flush=True)

    metric = dense.metric
    gains = []
    for budget in args.budgets:
        for method in methods:
            by_strategy = {r["strategy"]: r[metric] for r in rows if r["budget"] == budget and r["method"] == method}
            if "uniform" not in by_strategy:
                continue
            others = {s: v for s, v in by_strategy.items() if s != "uniform"}
            if others:
                best = max(others, key=others.get)
                gains.append(
                    {
                        "budget": budget,
                        "method": method,
                        "uniform": by_strategy["uniform"],
                        "best": best,
                        "best_value": others[best],
                        "gain_points": 100 * (others[best] - by_strategy["uniform"]),
                    }
                )
    fisher = {
        "seconds": fisher_seconds,
        "cached": fisher_cached,
        "statistics": list(needs),
        **fisher_settings.to_dict(),
    }
    extra = {
        "dense": dense.to_dict(),
        "fisher": fisher,
        "sensitivity": sensitivity,
        "methods": methods,
        "strategies": strategies,
        "gains_over_uniform": gains,
    }
    write("allocation", args, rows, extra)
    print("\nbest non-uniform strategy vs uniform (accuracy points):")
    for g in gains:
        print(
            f"  budget {g['budget']} {g['method']:7s}: {g['best']} {g['best_value']:.4f} vs uniform {g['uniform']:.4f} "
            f"({g['gain_points']:+.1f})"
        )


if __name__ == "__main__":
    main()
