"""Rank allocation command: ``allocate`` (per-layer ranks under a global parameter budget, saved as a plan).

    python -m lowrank allocate --model minilm-rt --budget 0.5 --strategy fisher_greedy --out plan.json
    python -m lowrank compress --model minilm-rt --plan plan.json --method fwsvd
"""

from __future__ import annotations

from ..cli import add_common
from ..progress import TqdmProgress


def register(sub) -> None:
    from ..allocate import DEFAULT_ALIGN, STRATEGIES, available_strategies

    strategies = "; ".join(f"{n}: {STRATEGIES[n].description.rstrip('.')}" for n in available_strategies())
    p = add_common(sub.add_parser("allocate", help="choose per-layer ranks under a global parameter budget",
                                  description=f"Strategies -- {strategies}"))
    p.add_argument("--model", default="minilm-rt")
    p.add_argument("--budget", required=True,
                   help="fraction of the compressible parameters to keep (0.5 or 50%%) or a parameter count (4000000)")
    p.add_argument("--strategy", default="fisher_greedy", choices=available_strategies())
    p.add_argument("--align", type=int, default=DEFAULT_ALIGN, help=f"ranks are multiples of this (default {DEFAULT_ALIGN})")
    p.add_argument("--task", default="rotten_tomatoes", help="task for Fisher estimation / sensitivity calibration")
    p.add_argument("--fisher-batches", type=int, default=32, help="batches for Fisher estimation (default 32)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size for Fisher estimation (default 16)")
    p.add_argument("--calibration-batches", type=int, default=4, help="batches for the sensitivity strategy (default 4)")
    p.add_argument("--predict", action="store_true",
                   help="estimate Fisher to report predicted loss increases for any strategy (fisher_greedy always does)")
    p.add_argument("--out", help="write the plan JSON here (atomic); use it with `compress --plan`")
    p.set_defaults(handler=allocate)


def allocate(args):
    from ..allocate import allocate as run_allocate
    from ..allocate import get_strategy, parse_budget
    from .core import load_any

    budget = parse_budget(args.budget)
    spec = get_strategy(args.strategy)
    loaded = load_any(args.model, args.device)
    importance = None
    if spec.needs_importance or args.predict:
        from ..fisher import estimate_fisher

        importance = estimate_fisher(loaded, args.task, num_batches=args.fisher_batches, batch_size=args.batch_size,
                                     progress=TqdmProgress())
    options = {"num_batches": args.calibration_batches} if args.strategy == "sensitivity" else {}
    task = args.task if spec.needs_task else None
    plan = run_allocate(loaded, budget, args.strategy, importance=importance, align=args.align, task=task,
                        progress=TqdmProgress(), **options)
    data = plan.to_dict()
    if args.out:
        data["out"] = str(plan.save(args.out))
    frame = plan.to_frame()
    factorized = len(plan.ranks)
    summary = (f"{args.strategy}: {plan.params:,} of {plan.budget:,} budgeted parameters "
               f"({plan.params / plan.dense_params:.1%} of {plan.dense_params:,} dense), "
               f"{factorized} layers factorized, {len(plan.layers) - factorized} dense"
               + (f", predicted loss increase {plan.predicted_loss:.4g}" if importance is not None else "")
               + (f"\nplan written to {data['out']}" if args.out else ""))
    return data, f"{frame.to_string(index=False)}\n\n{summary}"
