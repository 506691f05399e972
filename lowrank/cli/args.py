"""Argument helpers every command shares: --json/--device/--threads, one set of statistics flags, --out/--force, output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import pandas as pd

from lowrank.io import to_jsonable, writable_output
from lowrank.statistics import DEFAULT, StatisticsSettings
from lowrank.statistics.settings import LABELS


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every command shares: --json, --device and --threads."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: $LOWRANK_THREADS or every core)")
    return parser


def add_statistics_options(parser: argparse.ArgumentParser, aliases: bool = True) -> argparse.ArgumentParser:
    """The calibration flags of every command that computes statistics (Fisher...): one name each.

    ``aliases``: also the short forms ``--batches`` / ``--batch-size``; a command whose own
    ``--batch-size`` means something else (``lpaf``: the training batch) passes ``False``.
    """
    d = DEFAULT
    parser.add_argument("--fisher-batches", *(["--batches"] if aliases else []), dest="fisher_batches", type=int,
                        default=d.num_batches, help=f"calibration batches for statistics such as Fisher (default {d.num_batches})")
    parser.add_argument("--fisher-batch-size", *(["--batch-size"] if aliases else []), dest="fisher_batch_size", type=int,
                        default=d.batch_size, help=f"examples per calibration batch (default {d.batch_size})")
    parser.add_argument("--labels", choices=LABELS, default=d.labels,
                        help="task labels (empirical Fisher) or labels sampled from the model's prediction (true Fisher)")
    parser.add_argument("--labels-per-example", type=int, default=d.labels_per_example,
                        help=f"with --labels sampled: labels drawn per example, squared gradients averaged "
                             f"(default {d.labels_per_example})")
    parser.add_argument("--fisher-split", default=d.split, help=f"split the statistics are computed on (default {d.split})")
    return parser


def add_output(parser: argparse.ArgumentParser, help: str) -> argparse.ArgumentParser:
    """``--out FOLDER`` and ``--force`` of every command that writes a model folder."""
    parser.add_argument("--out", help=help)
    parser.add_argument("--force", action="store_true",
                        help="replace an existing model folder that lowrank did not mark as its output "
                             "(never a folder holding other files)")
    return parser


def output_folder(args) -> Optional[Path]:
    """``--out`` checked before any work (:func:`lowrank.io.writable_output`), or ``None`` without one."""
    return writable_output(Path(args.out), args.force) if args.out else None


def statistics_settings(args) -> StatisticsSettings:
    """The :class:`StatisticsSettings` of the flags :func:`add_statistics_options` made."""
    return DEFAULT.with_(num_batches=args.fisher_batches, batch_size=args.fisher_batch_size, labels=args.labels,
                         labels_per_example=args.labels_per_example, split=args.fisher_split)


def emit(args, data, table=None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(to_jsonable(data), indent=2))
    elif isinstance(table, pd.DataFrame):
        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
            print(table.to_string(index=False))
    elif table is not None:
        print(table)
