"""Argument helpers every command shares: --json/--device/--threads, --task and its default, one set of
statistics flags, --out/--force, the checks of shared options before any work, output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from lowrank.evaluation.perplexity import DEFAULT_PROTOCOL, DEFAULT_WINDOW, PROTOCOLS
from lowrank.files.jsonable import to_jsonable
from lowrank.files.outputs import writable_output
from lowrank.loaded import LoadedModel
from lowrank.models import load_model
from lowrank.models.labels import default_task
from lowrank.statistics import DEFAULT, StatisticsSettings
from lowrank.statistics.settings import LABELS, calibration_notes
from lowrank.validate import COUNT, THREADS, Range, arg_type, path_arg

EDGE = Range(0, 0.5, high_open=True)  # --grad-edge: a share of the window's tokens at each end
NON_NEGATIVE = Range(0)
DEFAULT_TOKENS = -1  # argparse's default for --calibration-tokens: not given (None means 'all')

DEVICE_TYPES = ("cpu", "cuda", "mps")
TASK_HELP = (
    "task name (rotten_tomatoes, lee, glue/<name>, <task>:text, hf:<dataset id>[:<config>]) or a .csv, .txt or "
    ".jsonl path (default: the task the model records: "
    "the one it was fine-tuned on; lee for a causal LM)"
)


class Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one ``error: ...`` line (exit 2), like every other bad input."""

    def error(self, message: str):
        flag, _, reason = message.partition(": ")
        if flag.startswith("argument ") and reason.startswith(flag.removeprefix("argument ").split("/")[0]):
            message = reason  # "argument --lr: --lr must be ..." says the flag once
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every command shares: --json, --device and --threads."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--threads",
        type=arg_type(THREADS, "--threads"),
        help="torch CPU threads (default: $LOWRANK_THREADS or every core)",
    )
    return parser


def add_task(parser: argparse.ArgumentParser, what: str = "") -> argparse.ArgumentParser:
    parser.add_argument("--task", help=f"{what}{'; ' if what else ''}{TASK_HELP}")
    return parser


def task_of(args, loaded) -> str:
    """``--task``, else the task ``loaded`` records (:func:`lowrank.models.labels.default_task`): never an unrelated one."""
    if getattr(args, "task", None):
        return args.task
    task = default_task(loaded)
    if task is None:
        raise ValueError(f"--task is required: {args.model} records no task")
    return task


def model_and_task(args) -> tuple[LoadedModel, str]:
    """``--model`` loaded for ``--task`` (an encoder gets a head), or, without ``--task``, as it is with the
    task it records (an encoder records none: the error asks for ``--task``)."""
    if args.task:
        return load_model(args.model, task=args.task, device=args.device), args.task
    loaded = load_model(args.model, device=args.device)
    return loaded, task_of(args, loaded)


def check_device(text: str) -> str:
    """``text`` when it names a device this machine has; ``ValueError`` otherwise (before any work)."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from err
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"--device {text!r}: unsupported device type {device.type!r}; use {', '.join(DEVICE_TYPES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    return text


def check_common(args) -> None:
    """The shared options, checked once before a command does any work (numbers are checked by their types)."""
    check_device(args.device)


def add_statistics_options(parser: argparse.ArgumentParser, aliases: bool = True) -> argparse.ArgumentParser:
    """The calibration flags of every command that computes statistics (Fisher...): one name each.

    ``aliases``: also the short forms ``--batches`` / ``--batch-size``; a command whose own
    ``--batch-size`` means something else (``lpaf``: the training batch) passes ``False``.
    """
    d = DEFAULT
    parser.add_argument(
        "--calibration-task",
        help="corpus the statistics are computed on, a task name or path as for --task (default: --task); e.g. "
        "rotten_tomatoes:text or a .txt file for a causal LM",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--calibration-tokens",
        type=calibration_tokens,
        default=DEFAULT_TOKENS,
        help="size of the calibration sample in tokens, rounded up to whole batches, or 'all' for the whole split "
        f"(default {d.tokens:,}: {d.num_batches} batches of {d.batch_size} x {d.max_length})",
    )
    size.add_argument(
        "--fisher-batches",
        *(["--batches"] if aliases else []),
        dest="fisher_batches",
        type=arg_type(COUNT, "--fisher-batches"),
        help=f"calibration batches for statistics such as Fisher, instead of --calibration-tokens "
        f"(default {d.num_batches})",
    )
    parser.add_argument(
        "--fisher-batch-size",
        *(["--batch-size"] if aliases else []),
        dest="fisher_batch_size",
        type=arg_type(COUNT, "--fisher-batch-size"),
        default=d.batch_size,
        help=f"examples per calibration batch (default {d.batch_size})",
    )
    parser.add_argument(
        "--labels",
        choices=LABELS,
        default=d.labels,
        help="task labels (empirical Fisher) or labels sampled from the model's prediction (true Fisher)",
    )
    parser.add_argument(
        "--labels-per-example",
        type=arg_type(COUNT, "--labels-per-example"),
        default=d.labels_per_example,
        help=f"with --labels sampled: labels drawn per example, squared gradients averaged "
        f"(default {d.labels_per_example})",
    )
    parser.add_argument(
        "--fisher-split", default=d.split, help=f"split the statistics are computed on (default {d.split})"
    )
    parser.add_argument(
        "--grad-edge",
        type=arg_type(EDGE, "--grad-edge"),
        default=d.grad_edge,
        help="gradient moments: drop the gradients of this share of each window's tokens at each end (e.g. 0.125; "
        "default 0: off)",
    )
    parser.add_argument(
        "--grad-clip",
        type=arg_type(NON_NEGATIVE, "--grad-clip"),
        default=d.grad_clip,
        help="gradient moments: clip each token's gradient norm at this multiple of the median token norm "
        "(default 0: off)",
    )
    return parser


def calibration_tokens(text: str) -> int | None:
    """``--calibration-tokens``: a positive whole number of tokens, or ``all`` (``None``: the whole split)."""
    if text.strip().lower() == "all":
        return None
    return arg_type(COUNT, "--calibration-tokens")(text)


def add_perplexity_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--protocol`` and ``--window``: how a causal LM's perplexity is measured (lowrank.evaluation.perplexity)."""
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=DEFAULT_PROTOCOL,
        help="perplexity protocol: windows (the split concatenated, EOS-separated, in fixed windows; default) or "
        "per-document (each document scored on its own); printed and stored with the number",
    )
    parser.add_argument(
        "--window",
        type=arg_type(COUNT, "--window"),
        help=f"tokens per perplexity window (default {DEFAULT_WINDOW}, or the model's context when shorter; "
        "a classifier's texts are cut at this length instead, default 128)",
    )
    return parser


def perplexity_options(args) -> dict:
    """The keywords of :func:`lowrank.evaluate` that :func:`add_perplexity_options` made."""
    return {"protocol": args.protocol, "max_length": args.window}


def add_output(parser: argparse.ArgumentParser, help: str) -> argparse.ArgumentParser:
    """``--out FOLDER`` and ``--force`` of every command that writes a model folder."""
    parser.add_argument("--out", type=path_arg("--out"), help=help)
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing model folder that lowrank did not mark as its output "
        "(never a folder holding other files)",
    )
    return parser


def output_folder(args) -> Path | None:
    """``--out`` checked before any work (:func:`lowrank.files.outputs.writable_output`), or ``None`` without one."""
    return writable_output(Path(args.out), args.force) if args.out else None


def statistics_settings(args) -> StatisticsSettings:
    """The :class:`StatisticsSettings` of the flags :func:`add_statistics_options` made."""
    settings = DEFAULT.with_(
        batch_size=args.fisher_batch_size,
        labels=args.labels,
        labels_per_example=args.labels_per_example,
        split=args.fisher_split,
        task=args.calibration_task or None,
        grad_edge=args.grad_edge,
        grad_clip=args.grad_clip,
    )
    if args.fisher_batches is not None:
        return settings.with_(num_batches=args.fisher_batches)
    if "calibration_tokens" in vars(args) and args.calibration_tokens != DEFAULT_TOKENS:
        return settings.for_tokens(args.calibration_tokens)
    return settings


def warn_calibration(record: dict, evaluated: str | None) -> None:
    """Print :func:`lowrank.statistics.settings.calibration_notes` on stderr, one ``warning: ...`` line each."""
    for note in calibration_notes(record, evaluated):
        print(f"warning: {note}", file=sys.stderr)


def emit(args, data, table=None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(to_jsonable(data), indent=2))
    elif isinstance(table, pd.DataFrame):
        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
            print(table.to_string(index=False))
    elif table is not None:
        print(table)
