"""LPAF vs factorize-then-fine-tune baselines on minilm-rt at equal parameter and training budgets.

At each budget every compressible Linear keeps the same fraction f of its parameters
(rank r = floor(f * out * in / (out + in))). Runs:

* ``svd+ft``: truncated SVD of the dense fine-tuned model (--model, minilm-rt), then
  --epochs of fine-tuning;
* ``fwsvd+ft``: Fisher-weighted SVD (empirical Fisher, --fisher-batches x 16 examples), same;
* ``fwsvd+mixed``: the same factors, then mixed-rank fine-tuning with the *dense* weight as
  the high-rank path (mask of ones, p0 annealed as for LPAF), for the baselines' epochs: LPAF
  without its pruning stage (our ablation, not in the paper);
* ``lpaf``: movement pruning while fine-tuning --start (default the pre-trained ``minilm``
  with a fresh head, as LPAF prunes during fine-tuning) for --prune-epochs ->
  sparsity-aware factorization -> mixed-rank fine-tuning (--epochs, p0 annealed linearly to 0);
* ``lpaf-no-sa``: the same with plain SVD of the pruned weights;
* ``lpaf-no-mixed``: the same with plain fine-tuning of the factorized model;
* ``lpaf-tfwsvd``: LPAF with element-wise Fisher-weighted factorization (``tfwsvd``, ALS) of
  the pruned weights, using the pruned model's Fisher, instead of sparsity-aware SVD
  (the pruned zeros stay targets, weighted by the Fisher; our variant, not the paper's);
* ``lpaf-tfwsvd-no-mixed``: the same with plain fine-tuning of the factorized model.

Equal training budgets: minilm-rt is 2 epochs of fine-tuning of minilm, so with the
defaults (--prune-epochs 2, --epochs 2) every compressed model has seen 4 epochs of Rotten
Tomatoes. When --start is --model itself (pruning an already fine-tuned model), the baselines
fine-tune --prune-epochs longer instead. The LPAF variants share one pruning run per
budget (its time is added to each variant's wall time). The dense model's Fisher is estimated
once and counted in the first fwsvd run's wall time; the pruned model's in each lpaf-tfwsvd
run's (the Fisher disk cache serves repeats of the same weights, so a rerun is faster).

Pruning sparsity for a budget f: by default s = 1 - f' where f' is the parameter fraction
the factorization actually keeps (floor of the rank), so the sparse model has as many
non-zeros as the factorized one has parameters; override with ``--sparsity 0.5=0.6 0.3=0.8``
(KEEP=SPARSITY pairs).

--prune-method taylor (first-order Taylor sensitivity) or magnitude runs the LPAF variants with
that pruning instead of movement pruning,
and --score-update adam normalizes the movement score updates (lowrank.training.prune).

--seeds 0 1 2 repeats every run with each training seed (data order, dropout and the
mixed-rank path draws of every training stage, the pruning included; the Fisher sample stays
fixed) and adds the mean and standard deviation of accuracy and loss per run and budget: the
differences between runs here are often a fraction of a point, about one standard error of
the accuracy on the validation split.

Needs no plotly. Accuracy is on the validation split (--limit batches in smoke runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pandas as pd
import torch
from common import fisher_maps, parser, write

import lowrank
from lowrank.compress import low_rank_layers
from lowrank.evaluation.size import parameter_counts
from lowrank.loaded import LoadedModel
from lowrank.models.architectures import compressible_linears
from lowrank.statistics import DEFAULT
from lowrank.training.finetune import TrainConfig, train
from lowrank.training.lpaf import LpafConfig, default_sparsity, lpaf, mixed_rank_finetune
from lowrank.training.prune import PRUNE_METHODS, prune

RUNS = (
    "svd+ft",
    "fwsvd+ft",
    "fwsvd+mixed",
    "lpaf",
    "lpaf-no-sa",
    "lpaf-no-mixed",
    "lpaf-tfwsvd",
    "lpaf-tfwsvd-no-mixed",
)
LPAF_RUNS = {
    "lpaf": ("sparsity_aware", True),
    "lpaf-no-sa": ("svd", True),
    "lpaf-no-mixed": ("sparsity_aware", False),
    "lpaf-tfwsvd": ("tfwsvd", True),
    "lpaf-tfwsvd-no-mixed": ("tfwsvd", False),
}  # run -> (factorization, mixed-rank fine-tuning)


def parse_sparsities(pairs: list[str]) -> dict[float, float]:
    mapping = {}
    for pair in pairs:
        keep, sep, sparsity = pair.partition("=")
        if not sep:
            raise SystemExit(f"--sparsity expects KEEP=SPARSITY pairs, got {pair!r}")
        mapping[float(keep)] = float(sparsity)
    return mapping


def finetuned_row(small, task, fit: Callable[[LoadedModel], object], limit, seconds: float) -> dict:
    """Fine-tune ``small`` in place with ``fit``, evaluate; ``seconds`` already spent is added to the wall time."""
    start = time.perf_counter()
    fit(small)
    result = lowrank.evaluate(small, task, limit=limit, latency=False)
    return {
        "accuracy": result.value,
        "loss": result.loss,
        "params_linear": result.params_linear,
        "params_total": result.params_total,
        "seconds": seconds + time.perf_counter() - start,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--sparsity", nargs="+", default=[], metavar="KEEP=SPARSITY")
    p.add_argument(
        "--start", default="minilm", help="model that movement pruning fine-tunes (default: pre-trained minilm)"
    )
    p.add_argument(
        "--prune-epochs", type=float, default=2.0, help="epochs of fine-tuning with movement pruning (default 2)"
    )
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of fine-tuning after factorization (default 2)")
    p.add_argument("--lr", type=float, default=8e-5, help="fine-tuning learning rate (baselines and LPAF)")
    p.add_argument("--prune-lr", type=float, default=8e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--p0", type=float, default=0.5)
    p.add_argument(
        "--prune-method",
        choices=list(PRUNE_METHODS),
        default="movement",
        help="pruning stage of the LPAF runs (default movement, as in the issue; taylor: |W*grad|)",
    )
    p.add_argument(
        "--score-update", choices=["raw", "adam"], default="raw", help="movement score update (lowrank.training.prune)"
    )
    p.add_argument("--fisher-batches", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds; each run is repeated per seed")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 3 steps per stage, 2 evaluation batches, 2 Fisher batches"
    )
    args = p.parse_args()
    if args.quick:
        args.limit = args.limit or 2
        args.fisher_batches = 2
    steps = 3 if args.quick else None
    sparsities = parse_sparsities(args.sparsity)
    prune_config = TrainConfig(
        epochs=args.prune_epochs,
        lr=args.prune_lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=steps,
    )
    finetune_config = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, max_steps=steps
    )
    # equal budgets: baselines start from an already fine-tuned model, unless pruning starts from it too
    extra = args.prune_epochs if args.start == args.model else 0.0
    baseline_config = TrainConfig(
        epochs=args.epochs + extra,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=(2 if extra else 1) * steps if steps else None,
    )

    loaded = lowrank.load_model(args.model, task=args.task, device=args.device)
    dense_linears = compressible_linears(loaded.model)
    dense = lowrank.evaluate(loaded, args.task, limit=args.limit, latency=False)
    rows = [
        {
            "keep": 1.0,
            "run": "dense",
            "accuracy": dense.value,
            "loss": dense.loss,
            "params_linear": dense.params_linear,
            "params_total": dense.params_total,
            "sparsity": 0.0,
            "seconds": 0.0,
        }
    ]
    print(rows[-1], flush=True)
    fisher = None
    for keep in args.keeps:
        sparsity = sparsities.get(keep, round(default_sparsity(loaded, keep), 4))
        for seed in args.seeds:

            def add(run: str, row: dict, keep=keep, seed=seed) -> None:
                rows.append({"keep": keep, "run": run, "seed": seed, "sparsity": row.pop("sparsity", 0.0), **row})
                print(rows[-1], flush=True)

            baseline = replace(baseline_config, seed=seed)

            def fit_plain(small, baseline=baseline):
                return train(small.model, small.tokenizer, lowrank.load_task(args.task), baseline)

            def fit_mixed(small, baseline=baseline):
                masks = {
                    n: torch.ones_like(dense_linears[n].weight, dtype=torch.bool) for n in low_rank_layers(small.model)
                }
                return mixed_rank_finetune(small, loaded, masks, args.task, baseline, args.p0)

            if "svd+ft" in args.runs:
                start = time.perf_counter()
                small = lowrank.compress(loaded, keep, method="svd")
                add("svd+ft", finetuned_row(small, args.task, fit_plain, args.limit, time.perf_counter() - start))
            for run, fit in (("fwsvd+ft", fit_plain), ("fwsvd+mixed", fit_mixed)):
                if run not in args.runs:
                    continue
                start = time.perf_counter()
                if fisher is None:
                    fisher = fisher_maps(loaded, args.task, args.fisher_batches)
                small = lowrank.compress(loaded, keep, method="fwsvd", importance=fisher)
                add(run, finetuned_row(small, args.task, fit, args.limit, time.perf_counter() - start))
            variants = [r for r in LPAF_RUNS if r in args.runs]
            if not variants:
                continue
            pruned = lowrank.load_model(args.start, task=args.task, device=args.device)
            result = prune(
                pruned,
                args.task,
                args.prune_method,
                sparsity,
                "global",
                replace(prune_config, seed=seed),
                score_update=args.score_update,
            )
            for run in variants:
                factorization, mixed = LPAF_RUNS[run]
                config = LpafConfig(
                    ranks=keep,
                    finetune_config=replace(finetune_config, seed=seed),
                    factorization=factorization,
                    mixed_rank=mixed,
                    p0=args.p0,
                    statistics=DEFAULT.with_(num_batches=args.fisher_batches),
                    eval_limit=args.limit,
                )
                small = lpaf(pruned, args.task, config, masks=result.masks)
                options = small.model.lowrank_info.options
                total, linear = parameter_counts(small.model)
                add(
                    run,
                    {
                        "accuracy": options["validation_accuracy"],
                        "loss": options["validation_loss"],
                        "params_linear": linear,
                        "params_total": total,
                        "sparsity": options["sparsity"],
                        "seconds": result.seconds + options["seconds_factorize"] + options["seconds_finetune"],
                        "prune_seconds": result.seconds,
                    },
                )
    extra = {}
    if len(args.seeds) > 1:
        extra["summary"] = seed_summary(rows[1:])
        with pd.option_context("display.width", 200):
            print(pd.DataFrame(extra["summary"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    write(
        "lpaf",
        args,
        rows,
        {
            "dense_accuracy": dense.value,
            **extra,
            "configs": {
                "prune": vars(prune_config),
                "finetune": vars(finetune_config),
                "baseline": vars(baseline_config),
            },
        },
    )


def seed_summary(rows: list[dict]) -> list[dict]:
    """Per (keep, run): number of seeds, mean and standard deviation (n - 1) of accuracy and loss."""
    frame = pd.DataFrame(rows).groupby(["keep", "run"], sort=False)[["accuracy", "loss"]]
    stats = frame.agg(["count", "mean", "std"])
    return [
        {
            "keep": keep,
            "run": run,
            "seeds": int(s[("accuracy", "count")]),
            "accuracy_mean": s[("accuracy", "mean")],
            "accuracy_std": s[("accuracy", "std")],
            "loss_mean": s[("loss", "mean")],
            "loss_std": s[("loss", "std")],
        }
        for (keep, run), s in stats.iterrows()
    ]


if __name__ == "__main__":
    main()
