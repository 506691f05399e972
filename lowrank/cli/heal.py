"""``lowrank heal``: a compressed model's factors trained toward its dense model on the calibration text only.

In memory (:func:`lowrank.heal`, then :func:`lowrank.save_compressed`) or, with ``--sequential``, block level one
decoder block at a time (:func:`lowrank.heal_sequential`); either way a new compressed folder ``--out`` (the input
folder and the dense model are only read) whose ``lowrank.json`` records the recipe and the held-out KL before and
after.
"""

from __future__ import annotations

import pandas as pd

from lowrank.cli.args import add_common, add_output, add_task, output_folder, task_of
from lowrank.compress import load_any, load_compressed, save_compressed
from lowrank.evaluation import evaluate
from lowrank.healing import DEFAULT_HEALING, LEVELS, PRECISIONS, HealConfig, default_healing, heal, heal_sequential
from lowrank.healing.config import BACKOFF
from lowrank.healing.heal import check_distinct, recipe_for
from lowrank.info import load_info
from lowrank.models.labels import DEFAULT_LM_TASK
from lowrank.progress import TqdmProgress
from lowrank.validate import COUNT, POSITIVE, arg_type, path_arg

FLAGS = {  # HealConfig field -> (flag, accepted numbers, help)
    "steps": ("--steps", COUNT, "end-to-end optimizer steps at most"),
    "time_budget_s": ("--time-budget", POSITIVE, "seconds of healing at most, both levels together"),
    "lr": ("--lr", POSITIVE, "end-to-end AdamW learning rate"),
    "batch_size": ("--batch-size", COUNT, "examples (token blocks or texts) per batch"),
    "max_length": ("--max-length", COUNT, "tokens per example"),
    "tokens": ("--tokens", COUNT, "training tokens at most (default: the whole training split less the held-out)"),
    "heldout_batches": ("--heldout-batches", COUNT, "batches of the training split held out for early stopping"),
    "eval_every": ("--eval-every", COUNT, "end to end: steps between held-out measurements"),
    "patience": ("--patience", COUNT, "end to end: held-out measurements without a new best before stopping"),
    "backoff": (
        "--backoff",
        BACKOFF,
        "end to end: after a held-out measurement without a new best, go back to the best checkpoint and multiply "
        "the learning rate by this",
    ),
    "temperature": (
        "--temperature",
        POSITIVE,
        "distil at this temperature T: the end-to-end loss and every held-out KL are T^2 KL of the output "
        "distributions softened by T",
    ),
    "block_steps": ("--block-steps", COUNT, "block level: optimizer steps per block"),
    "block_lr": ("--block-lr", POSITIVE, "block level: AdamW learning rate"),
}


def shown_default(field: str, words: dict | None = None) -> str:
    """`` (default ...)`` of a setting: its value in the recipe of each kind of model (one value when they agree)."""
    values = {kind: getattr(config, field) for kind, config in DEFAULT_HEALING.items()}
    say = {kind: (words or {}).get(v, v) for kind, v in values.items()}
    if len(set(map(str, say.values()))) == 1:
        value = next(iter(say.values()))
        return "" if value is None else f" (default {value})"
    return " (default " + ", ".join(f"{kind} {value}" for kind, value in say.items()) + ")"


def chosen(args, recipe: HealConfig) -> HealConfig:
    """``recipe`` (the model's default) with the settings given on the command line."""
    given = {
        field: getattr(args, field)
        for field in ("level", "norms", "precision", *FLAGS)
        if getattr(args, field) is not None
    }
    return recipe.with_(**given)


def register(sub) -> None:
    p = add_common(
        sub.add_parser(
            "heal",
            help="train a compressed model's factors toward its dense model on the calibration text (no labels)",
            description="Block level: each block's factors fitted to the dense block's outputs; end to end: the "
            "model distilled toward the dense model's token (or class) distribution, KL, with early stopping on "
            "held-out text of the training split and a time budget. Objectives: docs/methods.md#healing-lowrankhealing.",
        )
    )
    p.add_argument("--model", required=True, type=path_arg("--model"), help="compressed model folder (lowrank.json)")
    p.add_argument("--dense", help="the dense model to heal toward (default: the base model its lowrank.json names)")
    add_task(p, "its training split is the healing text")
    add_output(p, "folder for the healed compressed model (atomic; required)")
    p.add_argument("--level", choices=LEVELS, help="what to train" + shown_default("level"))
    for field, (flag, limits, text) in FLAGS.items():
        p.add_argument(flag, dest=field, type=arg_type(limits, flag), help=text + shown_default(field))
    p.add_argument(
        "--norms",
        action="store_const",
        const=True,
        help="train the norm weights too" + shown_default("norms", {False: "the factors only"}),
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="arithmetic of the training steps: bfloat16 mixed precision runs more steps per second on hardware with "
        "bfloat16 matrix units (held-out checks stay float32)" + shown_default("precision"),
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="causal LMs, --level block: one decoder block of each model in memory at a time",
    )
    p.add_argument("--evaluate", action="store_true", help="evaluate the healed model on --task's validation split")
    p.set_defaults(handler=heal_command)


def heal_command(args):
    if not args.out:
        raise ValueError("lowrank heal writes the healed model to a folder: pass --out")
    check_distinct(args.model, args.out)
    out = output_folder(args)
    info = load_info(args.model)  # a compressed folder, before any work
    dense_name = args.dense or info.base_model
    if args.sequential:
        task = args.task or DEFAULT_LM_TASK
        config = chosen(args, default_healing("causal-lm"))
        out = heal_sequential(
            args.model, out, task, config, dense_name, TqdmProgress(), device=args.device, force=args.force
        )
        healed = load_compressed(out, args.device) if args.evaluate else None
    else:
        compressed = load_compressed(args.model, args.device)
        task = task_of(args, compressed)
        dense = load_any(dense_name, args.device)
        healed = heal(compressed, dense, task, chosen(args, recipe_for(compressed)), TqdmProgress())
        out = save_compressed(healed, out, force=args.force)
    record = load_info(out).healing
    row = {
        "model": args.model,
        "out": str(out),
        "level": record["level"],
        "heldout_kl_before": round(record["heldout_before"], 5),
        "heldout_kl_after": round(record["heldout_after"], 5),
        "kept": record["kept"],
        "steps": record.get("end_to_end", {}).get("steps", 0),
        "block_steps": sum(record.get("blocks", {}).get("block_steps", [])),
        "train_tokens": record["train_tokens"],
        "seconds": round(record["seconds"], 1),
    }
    if args.evaluate:
        row |= evaluate(healed, task, progress=TqdmProgress()).to_dict()
    return row, pd.DataFrame([row])
