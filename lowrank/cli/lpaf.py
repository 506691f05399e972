"""Pruning and LPAF commands, one ``<name>_command`` handler each.

``prune``: :func:`lowrank.training.prune.prune` (movement, taylor or magnitude scores while fine-tuning),
saved as a masked model; ``lpaf``: :func:`lowrank.training.lpaf.lpaf` (prune, sparsity-aware SVD,
mixed-rank fine-tuning), saved as a compressed model; ``ranks``: numerical / effective / energy ranks of
every compressible matrix (one SVD each). Cost: the fine-tuning runs dominate; ``ranks`` is one SVD per layer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from lowrank.allocation import read_ranks
from lowrank.cli.args import (
    add_common,
    add_output,
    add_perplexity_options,
    add_statistics_options,
    add_task,
    model_and_task,
    output_folder,
    perplexity_options,
    statistics_settings,
)
from lowrank.compress import load_any, save_compressed
from lowrank.evaluation import evaluate
from lowrank.progress import TqdmProgress
from lowrank.training.lpaf import FACTORIZATIONS, FINETUNE_CONFIG, LpafConfig, average_ranks, lpaf, rank_analysis
from lowrank.training.prune import MASKS_FILE, PRUNE_CONFIG, PRUNE_METHODS, load_masks, prune, save_pruned
from lowrank.validate import COUNT, FRACTION, OPEN_FRACTION, POSITIVE, UNIT, arg_type, path_arg


def register(sub) -> None:
    p = add_common(
        sub.add_parser("prune", help="fine-tune while pruning (movement, taylor or magnitude) and save a masked model")
    )
    p.add_argument("--model", default="minilm-rt")
    add_task(p, "task to fine-tune on while pruning")
    p.add_argument("--method", choices=list(PRUNE_METHODS), default="movement")
    p.add_argument(
        "--sparsity",
        type=arg_type(OPEN_FRACTION, "--sparsity"),
        default=0.7,
        help="target fraction of compressible weights set to zero",
    )
    p.add_argument(
        "--scope", choices=["global", "layer"], default="global", help="one threshold for all layers, or per layer"
    )
    p.add_argument(
        "--warmup-fraction",
        type=arg_type(UNIT, "--warmup-fraction"),
        default=0.1,
        help="fraction of steps before pruning starts (default 0.1)",
    )
    p.add_argument(
        "--cooldown-fraction",
        type=arg_type(UNIT, "--cooldown-fraction"),
        default=0.1,
        help="final fraction of steps held at the target (default 0.1)",
    )
    _score_update(p)
    _train_options(p, "pruning")
    add_output(p, "folder for the masked model (safetensors + masks.safetensors + pruning.json, atomic)")
    p.add_argument("--evaluate", action="store_true", help="evaluate the pruned model on --task")
    add_perplexity_options(p)
    p.set_defaults(handler=prune_command)

    p = add_common(
        sub.add_parser("lpaf", help="low-rank prune-and-factorize: prune, sparsity-aware SVD, mixed-rank fine-tuning")
    )
    p.add_argument(
        "--model",
        default="minilm-rt",
        help="dense model to prune while fine-tuning (pre-trained with a head, e.g. minilm, "
        "or fine-tuned), or a folder written by `prune` (skips pruning)",
    )
    add_task(p, "task to prune and fine-tune on")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--keep",
        type=arg_type(FRACTION, "--keep"),
        default=0.5,
        help="fraction of each layer's parameters kept (default 0.5)",
    )
    group.add_argument("--plan", type=path_arg("--plan"), help="JSON file with a 'ranks' object {layer: rank}")
    p.add_argument(
        "--sparsity",
        type=arg_type(OPEN_FRACTION, "--sparsity"),
        help="pruning target (default: 1 - kept parameter fraction)",
    )
    p.add_argument("--prune-method", choices=list(PRUNE_METHODS), default="movement")
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    _score_update(p)
    p.add_argument(
        "--factorization",
        choices=list(FACTORIZATIONS),
        default="sparsity_aware",
        help="sparsity_aware (fit only the kept entries, default), svd of the pruned weights, or "
        "fwsvd / tfwsvd of the pruned weights with the pruned model's Fisher",
    )
    add_statistics_options(p, aliases=False)  # the pruned model's Fisher (fwsvd / tfwsvd); --batch-size is training's
    p.add_argument(
        "--no-mixed-rank", action="store_true", help="plain fine-tuning of the factorized model instead of mixed-rank"
    )
    p.add_argument(
        "--score-weighting", action="store_true", help="weight kept entries by their movement-score rank (1..2)"
    )
    p.add_argument(
        "--p0", type=arg_type(UNIT, "--p0"), default=0.5, help="initial probability of the sparse path (default 0.5)"
    )
    p.add_argument("--anneal", choices=["linear", "cosine"], default="linear")
    p.add_argument("--prune-epochs", type=arg_type(POSITIVE, "--prune-epochs"), default=2.0)
    p.add_argument("--prune-max-steps", type=arg_type(COUNT, "--prune-max-steps"))
    _train_options(p, "mixed-rank fine-tuning")
    p.add_argument("--limit", type=arg_type(COUNT, "--limit"), help="evaluate on at most this many batches")
    add_output(p, "folder for the compressed model (atomic; loads with load_compressed)")
    p.set_defaults(handler=lpaf_command)

    p = add_common(sub.add_parser("ranks", help="numerical / effective / energy ranks of every compressible matrix"))
    p.add_argument("--model", default="minilm-rt")
    p.add_argument(
        "--tol",
        type=arg_type(OPEN_FRACTION, "--tol"),
        default=1e-3,
        help="relative tolerance of the numerical rank (default 1e-3)",
    )
    p.add_argument("--summary", action="store_true", help="print only the averages over matrices")
    p.set_defaults(handler=ranks_command)


def _score_update(p) -> None:
    p.add_argument(
        "--score-update",
        choices=["raw", "adam"],
        default="raw",
        help="movement scores: raw sum of -W*grad, or Adam-normalized updates (see lowrank.training.prune)",
    )


def _train_options(p, what: str) -> None:
    p.add_argument("--epochs", type=arg_type(POSITIVE, "--epochs"), default=2.0, help=f"epochs of {what} (default 2)")
    p.add_argument("--max-steps", type=arg_type(COUNT, "--max-steps"), help=f"cap on {what} steps")
    p.add_argument("--lr", type=arg_type(POSITIVE, "--lr"), help=f"learning rate of {what}")
    p.add_argument("--batch-size", type=arg_type(COUNT, "--batch-size"), default=32)
    p.add_argument("--max-length", type=arg_type(COUNT, "--max-length"), default=64)


def _config(args, base, epochs: float, max_steps):
    overrides = {"epochs": epochs, "max_steps": max_steps, "batch_size": args.batch_size, "max_length": args.max_length}
    if args.lr is not None:
        overrides["lr"] = args.lr
    return replace(base, **overrides)


def prune_command(args):
    out = output_folder(args)
    config = _config(args, PRUNE_CONFIG, args.epochs, args.max_steps)
    loaded, task = model_and_task(args)
    result = prune(
        loaded,
        task,
        args.method,
        args.sparsity,
        args.scope,
        config,
        progress=TqdmProgress(),
        warmup=args.warmup_fraction,
        cooldown=args.cooldown_fraction,
        score_update=args.score_update,
    )
    record = {k: v for k, v in result.record().items() if k not in ("history", "layer_sparsity", "config")}
    record["model"] = args.model
    if out:
        record["out"] = str(save_pruned(loaded, result, out, force=args.force))
    if args.evaluate:
        evaluation = evaluate(loaded, task, latency=False, progress=TqdmProgress(), **perplexity_options(args))
        record |= {evaluation.metric: evaluation.value, "protocol": evaluation.protocol}
    return record, pd.DataFrame([record])


def lpaf_command(args):
    out = output_folder(args)
    ranks = read_ranks(args.plan) if args.plan else args.keep
    masks = load_masks(args.model) if (Path(args.model) / MASKS_FILE).exists() else None
    if masks is not None and args.sparsity is not None:
        raise ValueError(f"{args.model} is already pruned (it has {MASKS_FILE}); drop --sparsity")
    prune_config = replace(
        PRUNE_CONFIG,
        epochs=args.prune_epochs,
        max_steps=args.prune_max_steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    config = LpafConfig(
        sparsity=args.sparsity,
        ranks=ranks,
        prune_config=prune_config,
        finetune_config=_config(args, FINETUNE_CONFIG, args.epochs, args.max_steps),
        factorization=args.factorization,
        mixed_rank=not args.no_mixed_rank,
        p0=args.p0,
        schedule=args.anneal,
        prune_method=args.prune_method,
        scope=args.scope,
        score_update=args.score_update,
        score_weighting=args.score_weighting,
        statistics=statistics_settings(args),
        eval_limit=args.limit,
    )
    loaded, task = model_and_task(args)
    result = lpaf(loaded, task, config, masks=masks, progress=TqdmProgress())
    info = result.model.lowrank_info
    record = {"model": args.model, "method": info.method, "layers": len(info.ranks), **info.options}
    if out:
        record["out"] = str(save_compressed(result, out, force=args.force))
    return record, pd.DataFrame([record]).T.rename(columns={0: "value"}).reset_index(names="field")


def ranks_command(args):
    frame = rank_analysis(load_any(args.model, args.device), tol=args.tol, progress=TqdmProgress())
    summary = average_ranks(frame)
    if args.summary:
        return summary, pd.DataFrame([summary]).round(3)
    return {"layers": frame, "average": summary}, frame.round(3)
