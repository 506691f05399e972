"""Weighted factorization on minilm-rt: accuracy and wall time of svd, fwsvd and tfwsvd.

At each budget every compressible Linear keeps the same fraction of its parameters;
no fine-tuning after factorization. Fisher information (empirical, 32 x 16 training
examples) drives the weighted methods. Wall time is the whole-model factorization
time (all 36 matrices), also given as a ratio to plain SVD.

With --curves, each tfwsvd solver is also run with increasing iteration caps at the
middle budget, giving the accuracy-vs-time curve of each solver.
"""

from __future__ import annotations

import time

from common import fisher_maps, parser, write

import lowrank
from lowrank.methods.registry import weighted_error

CONFIGS = [
    ("svd", {}),
    ("fwsvd", {"axis": "in"}),
    ("fwsvd", {"axis": "out"}),
    ("tfwsvd", {"solver": "als"}),
    ("tfwsvd", {"solver": "em"}),
    ("tfwsvd", {"solver": "adam"}),
    ("tfwsvd", {"solver": "adam_sgd"}),
]


def label(method: str, options: dict) -> str:
    return method + "".join(f"[{v}]" for v in options.values())


def run(loaded, fisher, keep, method, options, args) -> dict:
    start = time.perf_counter()
    model = lowrank.compress(
        loaded, keep, method=method, importance=fisher if lowrank.get_method(method).needs else None, **options
    )
    seconds = time.perf_counter() - start
    dense = lowrank.compressible_linears(loaded.model)
    error = sum(
        weighted_error(dense[n].weight.detach().float(), m.U.detach(), m.V.detach(), fisher[n].to(m.U.device))
        for n, m in model.model.named_modules()
        if isinstance(m, lowrank.LowRankLinear)
    )
    result = lowrank.evaluate(model, args.task, limit=args.limit, latency=False)
    return {
        "keep": keep,
        "method": label(method, options),
        "accuracy": result.value,
        "loss": result.loss,
        "fisher_weighted_error": error,
        "seconds": seconds,
        "iterations": sum(len(h) - 1 for h in model.model.lowrank_info.history.values()),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--fisher-batches", type=int, default=32)
    p.add_argument(
        "--curves", action="store_true", help="also sweep iteration caps of each solver at the middle budget"
    )
    args = p.parse_args()
    loaded = lowrank.load_model(args.model, device=args.device)
    fisher = fisher_maps(loaded, args.task, args.fisher_batches)
    dense = lowrank.evaluate(loaded, args.task, limit=args.limit, latency=False)
    rows = []
    for keep in args.keeps:
        for method, options in CONFIGS:
            row = run(loaded, fisher, keep, method, options, args)
            rows.append(row)
            print(row, flush=True)
        base = next(r["seconds"] for r in rows if r["keep"] == keep and r["method"] == "svd")
        for r in rows:
            if r["keep"] == keep:
                r["time_vs_svd"] = r["seconds"] / base
    curves = []
    if args.curves:
        keep = sorted(args.keeps)[len(args.keeps) // 2]
        for solver in ("als", "em", "adam", "adam_sgd"):
            for iters in (1, 3, 10, 30, 100):
                row = run(loaded, fisher, keep, "tfwsvd", {"solver": solver, "max_iters": iters, "tol": 0.0}, args)
                curves.append({"solver": solver, "max_iters": iters, **row})
                print(curves[-1], flush=True)
    write("weighted", args, rows, {"dense_accuracy": dense.value, "curves": curves})


if __name__ == "__main__":
    main()
