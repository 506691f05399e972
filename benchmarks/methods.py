"""Every factorization method side by side: same model, same budgets, same evaluation, no fine-tuning.

For each kept fraction (every compressible Linear keeps the same fraction of its parameters)
this runs svd, fwsvd (both axes; the better is the "best axis" row), tfwsvd, asvd, svd_llm and
kfac_svd and reports the task metric (accuracy, or perplexity for a causal LM), the loss, the
time to collect each method's statistics (Fisher; input/gradient moments; shared passes are
counted once, by the first method that needs them, all without cache) and the whole-model
factorization time, both as multiples of plain SVD's factorization time.

    python benchmarks/methods.py --model minilm-rt --task rotten_tomatoes --keeps 0.3 0.5 0.7
    python benchmarks/methods.py --model smollm2-135m --task lee --keeps 0.8 0.6 --tfwsvd-iters 1
"""

from __future__ import annotations

import time

from common import METHOD_CONFIGS as CONFIGS
from common import parser, write

import lowrank
from lowrank.statistics import StatisticsSettings, restrict, statistics_for


def label(method: str, options: dict) -> str:
    return method + "".join(f"[{v}]" for v in options.values())


def collect(loaded, task, settings: StatisticsSettings) -> tuple[dict, dict]:
    """Statistics of every kind the methods need, and the seconds each kind's pass took (uncached)."""
    stats, seconds = {}, {}
    for kinds in (("fisher",), ("activations", "gradients")):
        start = time.perf_counter()
        part = statistics_for(loaded, task, kinds, settings, use_cache=False)
        seconds[kinds] = time.perf_counter() - start
        for name, tensors in part.items():
            stats.setdefault(name, {}).update(tensors)
    return stats, seconds


def statistics_seconds(method: str, seconds: dict) -> float:
    needs = set(lowrank.get_method(method).needs)
    return sum(s for kinds, s in seconds.items() if needs & set(kinds))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--fisher-batches", type=int, default=32, help="calibration batches of 16 for every statistic")
    p.add_argument("--tfwsvd-iters", type=int, help="iteration cap of tfwsvd (default: the solver's)")
    args = p.parse_args()
    loaded = lowrank.load_model(args.model, device=args.device)
    settings = StatisticsSettings(num_batches=args.fisher_batches, batch_size=16)
    stats, stat_seconds = collect(loaded, args.task, settings)
    dense = lowrank.evaluate(loaded, args.task, limit=args.limit, latency=False)
    rows = [{"keep": 1.0, "method": "dense", "metric": dense.metric, "value": dense.value, "loss": dense.loss}]
    for keep in args.keeps:
        svd_seconds = None
        for method, options in CONFIGS:
            if method == "tfwsvd" and args.tfwsvd_iters is not None:
                options = {"max_iters": args.tfwsvd_iters}
            start = time.perf_counter()
            small = lowrank.compress(
                loaded, keep, method=method, stats=restrict(stats, lowrank.get_method(method).needs), **options
            )
            seconds = time.perf_counter() - start
            svd_seconds = svd_seconds or seconds
            result = lowrank.evaluate(small, args.task, limit=args.limit, latency=False)
            regularized = small.model.lowrank_info.regularizers()
            rows.append(
                {
                    "keep": keep,
                    "method": label(method, options),
                    "metric": result.metric,
                    "value": result.value,
                    "loss": result.loss,
                    "factorize_s": seconds,
                    "factorize_x_svd": seconds / svd_seconds,
                    "statistics_x_svd": statistics_seconds(method, stat_seconds) / svd_seconds,
                    "regularizers": ", ".join(f"{k}: {n}" for k, n in regularized.items()),
                }
            )
            print(rows[-1], flush=True)
        extra = {
            "statistics_seconds": {"+".join(k): v for k, v in stat_seconds.items()},
            "settings": settings.to_dict(),
            "complete": keep == args.keeps[-1],
        }
        write(f"methods_{args.model}", args, rows, extra)  # after every budget: a stopped run keeps what it measured


if __name__ == "__main__":
    main()
