"""``lowrank`` / ``python -m lowrank``: the library's operations on the command line.

Every other module in :mod:`lowrank.cli` contributes sub-commands through a
``register(subparsers)`` function; a handler gets the parsed arguments and returns
``(data, table)``: ``data`` is printed as JSON with ``--json``, otherwise ``table``
(a DataFrame or text) is printed for people.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Optional, Sequence

from lowrank import cli
from lowrank.cli.args import emit
from lowrank.data.tasks import TaskError
from lowrank.models.errors import ModelLoadError
from lowrank.statistics.passes import init_from_env, is_main
from lowrank.threads import set_threads

NOT_COMMANDS = ("main", "args")  # modules of this package that register no sub-command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrank", description="Weighted low-rank compression of Transformer models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if info.name not in NOT_COMMANDS:
            importlib.import_module(f"{cli.__name__}.{info.name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(getattr(args, "threads", None))
    init_from_env(getattr(args, "device", "cpu"))  # data-parallel statistics under torchrun
    try:
        data, table = args.handler(args)
    except (ModelLoadError, TaskError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if is_main():
        emit(args, data, table)
    return 0


def run() -> None:
    """Entry point of the ``lowrank`` console script."""
    sys.exit(main())
