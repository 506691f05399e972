"""``python -m lowrank``: the library's operations on the command line.

Every module in :mod:`lowrank.commands` contributes sub-commands through a
``register(subparsers)`` function; a handler gets the parsed arguments and returns
``(data, table)``: ``data`` is printed as JSON with ``--json``, otherwise ``table``
(a DataFrame or text) is printed for people.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lowrank", description="Weighted low-rank compression of Transformer models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every command shares: --json and --device."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    return parser


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, pd.DataFrame):
        return _jsonable(value.to_dict(orient="records"))
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)


def emit(args, data, table=None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(data), indent=2))
    elif isinstance(table, pd.DataFrame):
        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
            print(table.to_string(index=False))
    elif table is not None:
        print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .data import TaskError
    from .models import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        data, table = args.handler(args)
    except (ModelLoadError, TaskError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    emit(args, data, table)
    return 0
