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
from collections.abc import Sequence

from lowrank import cli
from lowrank.cli.args import Parser, check_common, emit
from lowrank.errors import USER_ERRORS, describe
from lowrank.statistics.passes import init_from_env, is_main
from lowrank.threads import set_threads

NOT_COMMANDS = ("main", "args")  # modules of this package that register no sub-command


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lowrank", description="Weighted low-rank compression of Transformer models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if info.name not in NOT_COMMANDS:
            importlib.import_module(f"{cli.__name__}.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input (:data:`lowrank.errors.USER_ERRORS`) ends with one ``error: ...`` line and 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed as one line)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        check_common(args)
        set_threads(getattr(args, "threads", None))
        init_from_env(args.device)  # data-parallel statistics under torchrun
        data, table = args.handler(args)
    except USER_ERRORS as err:
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    if is_main():
        emit(args, data, table)
    return 0


def run() -> None:
    """Entry point of the ``lowrank`` console script."""
    sys.exit(main())
