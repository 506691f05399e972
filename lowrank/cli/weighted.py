"""Fisher-weighted commands, one ``<name>_command`` handler each.

``fisher``: the diagonal Fisher ``F`` (out, in) of every compressible weight ``W`` (cached), summarized per
layer (total, max, dispersion). ``risk``: per layer at ``--keep``, the predicted loss increase
``0.5 sum_ij F_ij (W - W_r)_ij^2`` of plain SVD and of a Fisher-weighted method, their ratio, and
``output_change``, the full-Fisher form ``0.5 mean_n <g_n, dW>^2`` of plain SVD's residual.
Cost: one Fisher pass unless cached, two factorizations per layer, one gradient pass for the full-Fisher form.
"""

from __future__ import annotations

import pandas as pd

from lowrank.analysis.metrics import fisher_dispersion, risk_summary, risk_table
from lowrank.cli.args import add_common, add_statistics_options, add_task, statistics_settings, task_of
from lowrank.compress import load_any
from lowrank.methods import get_method
from lowrank.models.architectures import compressible_weights
from lowrank.progress import TqdmProgress
from lowrank.ranks import resolve_ranks
from lowrank.statistics import select, statistics_for
from lowrank.statistics.taylor import svd_loss_change
from lowrank.validate import FRACTION, arg_type


def register(sub) -> None:
    p = add_common(sub.add_parser("fisher", help="estimate Fisher information of every compressible weight (cached)"))
    _fisher_options(p)
    p.set_defaults(handler=fisher_command)

    p = add_common(
        sub.add_parser(
            "risk",
            help="per-layer predictive SVD-drop metric (needs Fisher)",
            description="Per layer at --keep: the predicted loss increase of plain SVD and of "
            "the weighted method (diagonal Fisher), their ratio (risk), and "
            "output_change, the full-Fisher quadratic form 0.5 mean_n <g_n, dW>^2 "
            "of plain SVD's residual (a second-order estimate of the KL between "
            "dense and compressed predictions; the per-layer predictor that ranks "
            "single-layer damage best across the task suite: "
            "docs/results/predictor.md).",
        )
    )
    _fisher_options(p)
    p.add_argument(
        "--keep",
        type=arg_type(FRACTION, "--keep"),
        default=0.3,
        help="fraction of each layer's parameters kept (default 0.3)",
    )
    p.add_argument("--method", default="fwsvd", help="weighted method compared with plain SVD (default fwsvd)")
    p.add_argument(
        "--taylor-split",
        metavar="SPLIT",
        help="also estimate each layer's SVD loss change with first-order + full-Fisher terms on SPLIT "
        "(train, or a labelled held-out split such as test; columns taylor_first, taylor_total)",
    )
    p.set_defaults(handler=risk_command)


def _fisher_options(p) -> None:
    p.add_argument("--model", default="minilm-rt")
    add_task(p, "task the Fisher information is estimated on")
    add_statistics_options(p)


def _estimate(loaded, task: str, args) -> dict:
    stats = statistics_for(loaded, task, ("fisher",), statistics_settings(args), progress=TqdmProgress())
    return select(stats, "fisher")


def fisher_command(args):
    loaded = load_any(args.model, args.device)
    importance = _estimate(loaded, task_of(args, loaded), args)
    rows = [
        {
            "name": n,
            "shape": "x".join(map(str, F.shape)),
            "total": float(F.sum()),
            "max": float(F.max()),
            "dispersion": fisher_dispersion(F),
        }
        for n, F in importance.items()
    ]
    return rows, pd.DataFrame(rows)


def risk_command(args):
    spec = get_method(args.method)  # checked before the Fisher pass, like --keep
    if spec.importance_key != "fisher":
        raise ValueError(
            f"--method {args.method}: risk compares plain SVD with a Fisher-weighted method (e.g. fwsvd or tfwsvd)"
        )
    loaded = load_any(args.model, args.device)
    task = task_of(args, loaded)
    ranks = resolve_ranks(loaded.model, args.keep)
    importance = _estimate(loaded, task, args)
    weights = {n: w.detach() for n, w in compressible_weights(loaded.model).items() if n in ranks}
    table = risk_table(weights, {n: importance[n] for n in weights}, ranks, method=args.method)
    settings = statistics_settings(args)
    change = svd_loss_change(loaded, task, ranks, settings, progress=TqdmProgress())
    table["output_change"] = [change[n]["second_order"] for n in table["name"]]
    if args.taylor_split:
        taylor = (
            change
            if args.taylor_split == settings.split
            else svd_loss_change(loaded, task, ranks, settings.with_(split=args.taylor_split), progress=TqdmProgress())
        )
        table["taylor_first"] = [taylor[n]["first_order"] for n in table["name"]]
        table["taylor_total"] = [taylor[n]["total"] for n in table["name"]]
    summary = risk_summary(table)
    return {"layers": table, "summary": summary}, f"{table.to_string(index=False)}\n\nsummary: {summary}"
