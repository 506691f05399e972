"""Rank allocation command: ``allocate_command`` chooses per-layer ranks under a global parameter budget
(:func:`lowrank.allocate`) and saves them as a plan that ``compress --plan`` reads.

python -m lowrank allocate --model minilm-rt --budget 0.5 --strategy uniform --out plan.json
python -m lowrank compress --model minilm-rt --plan plan.json --method fwsvd
"""

from __future__ import annotations

from lowrank.allocation import (
    DEFAULT_ALIGN,
    DEFAULT_STRATEGY,
    STRATEGIES,
    allocate,
    available_strategies,
    get_strategy,
    parse_budget,
)
from lowrank.allocation.choices import layer_choices, resolve_budget
from lowrank.cli.args import add_common, add_statistics_options, add_task, statistics_settings, task_of
from lowrank.compress import load_any
from lowrank.needs import needs_for
from lowrank.progress import TqdmProgress
from lowrank.ranks import linear_shapes
from lowrank.statistics import needs_task, statistics_for
from lowrank.validate import COUNT, arg_type, path_arg


def register(sub) -> None:
    strategies = "; ".join(f"{n}: {STRATEGIES[n].description.rstrip('.')}" for n in available_strategies())
    p = sub.add_parser(
        "allocate",
        help="choose per-layer ranks under a global parameter budget",
        description=f"Strategies -- {strategies}",
    )
    add_statistics_options(add_common(p))
    p.add_argument("--model", default="minilm-rt")
    p.add_argument(
        "--budget",
        required=True,
        help="fraction of the compressible parameters to keep (0.5 or 50%%) or a parameter count (4000000)",
    )
    p.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        choices=available_strategies(),
        help=f"allocation strategy (default {DEFAULT_STRATEGY})",
    )
    p.add_argument(
        "--align",
        type=arg_type(COUNT, "--align"),
        default=DEFAULT_ALIGN,
        help=f"ranks are multiples of this (default {DEFAULT_ALIGN})",
    )
    add_task(p, "task for Fisher estimation / sensitivity calibration")
    p.add_argument(
        "--calibration-batches",
        type=arg_type(COUNT, "--calibration-batches"),
        default=4,
        help="batches for the measured strategies, sensitivity and measured_greedy (default 4)",
    )
    p.add_argument(
        "--measure-method",
        default="kfac_svd",
        help="measured_greedy: the method each layer is factorized by while its loss is measured (default kfac_svd; "
        "its statistics are computed on the calibration sample)",
    )
    p.add_argument(
        "--predict",
        action="store_true",
        help="estimate Fisher to report predicted loss increases for any strategy (fisher_greedy always does)",
    )
    p.add_argument(
        "--out", type=path_arg("--out"), help="write the plan JSON here (atomic); use it with `compress --plan`"
    )
    p.set_defaults(handler=allocate_command)


def allocate_command(args):
    budget = parse_budget(args.budget)
    spec = get_strategy(args.strategy)
    loaded = load_any(args.model, args.device)
    resolve_budget(budget, layer_choices(linear_shapes(loaded.model), args.align))  # a bad budget costs no Fisher pass
    measured = args.strategy == "measured_greedy"
    needs = needs_for([args.measure_method] if measured else [], args.strategy, args.predict)
    task = task_of(args, loaded) if spec.needs_task or needs_task(needs) else None
    stats = statistics_for(loaded, task, needs, statistics_settings(args), progress=TqdmProgress()) if needs else {}
    options = {"num_batches": args.calibration_batches} if spec.needs_task else {}
    if measured:
        options["method"] = args.measure_method
    plan = allocate(
        loaded,
        budget,
        args.strategy,
        align=args.align,
        stats=stats,
        task=task if spec.needs_task else None,
        progress=TqdmProgress(),
        **options,
    )
    data = plan.to_dict()
    if args.out:
        data["out"] = str(plan.save(args.out))
    frame = plan.to_frame()
    factorized = len(plan.ranks)
    summary = (
        f"{args.strategy}: {plan.params:,} of {plan.budget:,} budgeted parameters "
        f"({plan.params / plan.dense_params:.1%} of {plan.dense_params:,} dense), "
        f"{factorized} layers factorized, {len(plan.layers) - factorized} dense"
        + (f", predicted loss increase {plan.predicted_loss:.4g}" if "fisher" in needs else "")
        + (f"\nplan written to {data['out']}" if args.out else "")
    )
    return data, f"{frame.to_string(index=False)}\n\n{summary}"
