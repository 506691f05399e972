"""Does pruning first make the weights easier to factorize? LPAF's premise, with no fine-tuning after it.

For each sparsity s in --sparsities, a copy of --model is pruned while it is fine-tuned
(--prune-method, default first-order Taylor; --epochs of the minilm-rt recipe; global
threshold, cubic schedule; ``lowrank.training.prune``). s = 0 is --model itself, unpruned. Every
compressible Linear of that model, ``W ⊙ M``, is then factorized to each kept parameter
fraction in --keeps with each method in --methods:

* ``svd``: truncated SVD of ``W ⊙ M``;
* ``fwsvd`` / ``tfwsvd``: the Fisher-weighted methods (library defaults) with the empirical
  Fisher of that same (pruned) model, --fisher-batches x 16 examples:
  ``min sum_ij F_ij ((W ⊙ M) - U V)_ij^2``.

Each factorized model is evaluated on the validation split as it is, without fine-tuning.
If first-order pruning leaves weights that are "sparse and low rank" (Ren & Zhu 2023), the
factorizations of a pruned model lose less than those of the dense model at the same rank.
This isolates the factorization stage of ``benchmarks/lpaf.py``: there the pruning epoch
must pay for itself through a better factorized starting point. On 2 CPU cores each pruning
run takes about 6 minutes at the default settings, each factorization and evaluation 5-15 s
(the defaults: about 25 minutes in all).
"""

from __future__ import annotations

import copy
import time

import pandas as pd
from common import fisher_maps, parser, write

import lowrank
from lowrank.training.finetune import TrainConfig
from lowrank.training.prune import PRUNE_METHODS, prune

METHODS = ("svd", "fwsvd", "tfwsvd")


def pruned_copy(loaded, task, method: str, sparsity: float, config: TrainConfig):
    """``loaded`` itself when ``sparsity`` is 0, else a pruned copy (``loaded`` is untouched)."""
    if sparsity == 0.0:
        return loaded
    copied = loaded.with_model(copy.deepcopy(loaded.model))
    prune(copied, task, method, sparsity, "global", config)
    return copied


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.85])
    p.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["svd", "tfwsvd"])
    p.add_argument("--prune-method", choices=list(PRUNE_METHODS), default="taylor")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of fine-tuning with pruning")
    p.add_argument("--lr", type=float, default=8e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fisher-batches", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 pruning steps, 2 evaluation and 2 Fisher batches")
    args = p.parse_args()
    if args.quick:
        args.limit = args.limit or 2
        args.fisher_batches = 2
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=32,
        max_length=64,
        seed=args.seed,
        max_steps=3 if args.quick else None,
    )
    loaded = lowrank.load_model(args.model, task=args.task, device=args.device)
    rows = []
    for sparsity in args.sparsities:
        start = time.perf_counter()
        model = pruned_copy(loaded, args.task, args.prune_method, sparsity, config)
        base = lowrank.evaluate(model, args.task, limit=args.limit, latency=False)
        rows.append(
            {
                "sparsity": sparsity,
                "method": "uncompressed",
                "keep": 1.0,
                "accuracy": base.value,
                "loss": base.loss,
                "seconds": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
        fisher = None
        if {"fwsvd", "tfwsvd"} & set(args.methods):
            fisher = fisher_maps(model, args.task, args.fisher_batches)
        for keep in args.keeps:
            for method in args.methods:
                start = time.perf_counter()
                options = {} if method == "svd" else {"importance": fisher}
                small = lowrank.compress(model, keep, method=method, **options)
                result = lowrank.evaluate(small, args.task, limit=args.limit, latency=False)
                rows.append(
                    {
                        "sparsity": sparsity,
                        "method": method,
                        "keep": keep,
                        "accuracy": result.value,
                        "loss": result.loss,
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).pivot_table(index="sparsity", columns=["keep", "method"], values="accuracy", sort=False)
    with pd.option_context("display.width", 200):
        print("validation accuracy without fine-tuning (rows: pruning sparsity; columns: kept fraction, method)")
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    write("prune_factorize", args, rows, {"config": vars(config)})


if __name__ == "__main__":
    main()
