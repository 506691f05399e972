"""Fisher-weighted commands: ``fisher`` (estimate importance) and ``risk`` (predictive SVD-drop metric)."""

from __future__ import annotations

import pandas as pd

from ..cli import add_common
from ..progress import TqdmProgress


def register(sub) -> None:
    p = add_common(sub.add_parser("fisher", help="estimate Fisher information of every compressible weight (cached)"))
    _fisher_options(p)
    p.set_defaults(handler=fisher)

    p = add_common(sub.add_parser("risk", help="per-layer predictive SVD-drop metric (needs Fisher)"))
    _fisher_options(p)
    p.add_argument("--keep", type=float, default=0.3, help="fraction of each layer's parameters kept (default 0.3)")
    p.add_argument("--method", default="fwsvd", help="weighted method compared with plain SVD (default fwsvd)")
    p.add_argument("--taylor-split", metavar="SPLIT",
                   help="also estimate each layer's SVD loss change with first-order + full-Fisher terms on SPLIT "
                        "(train, or a labelled held-out split such as test; columns taylor_first, taylor_total)")
    p.set_defaults(handler=risk)


def _fisher_options(p) -> None:
    p.add_argument("--model", default="minilm-rt")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--batches", type=int, default=32, help="number of batches (default 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--labels", choices=["data", "sampled"], default="data",
                   help="task labels, or labels sampled from the model's own prediction")


def _estimate(args):
    from ..fisher import estimate_fisher
    from .core import load_any

    loaded = load_any(args.model, args.device)
    importance = estimate_fisher(loaded, args.task, num_batches=args.batches, batch_size=args.batch_size,
                                 labels=args.labels, progress=TqdmProgress())
    return loaded, importance


def fisher(args):
    from ..metrics import fisher_dispersion

    loaded, importance = _estimate(args)
    rows = [{"name": n, "shape": "x".join(map(str, F.shape)), "total": float(F.sum()), "max": float(F.max()),
             "dispersion": fisher_dispersion(F)} for n, F in importance.items()]
    return rows, pd.DataFrame(rows)


def risk(args):
    from ..architectures import compressible_linears
    from ..compress import resolve_ranks
    from ..metrics import risk_summary, risk_table

    loaded, importance = _estimate(args)
    ranks = resolve_ranks(loaded.model, args.keep)
    weights = {n: m.weight.detach() for n, m in compressible_linears(loaded.model).items() if n in ranks}
    table = risk_table(weights, {n: importance[n] for n in weights}, ranks, method=args.method)
    if args.taylor_split:
        from ..fisher import svd_loss_change

        taylor = svd_loss_change(loaded, args.task, ranks, num_batches=args.batches, batch_size=args.batch_size,
                                 labels=args.labels, split=args.taylor_split, progress=TqdmProgress())
        table["taylor_first"] = [taylor[n]["first_order"] for n in table["name"]]
        table["taylor_total"] = [taylor[n]["total"] for n in table["name"]]
    summary = risk_summary(table)
    return {"layers": table, "summary": summary}, f"{table.to_string(index=False)}\n\nsummary: {summary}"
