"""Argument helpers every command shares: --json/--device/--threads, one set of statistics flags, output."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from lowrank.io import to_jsonable
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
