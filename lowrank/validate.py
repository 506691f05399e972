"""One check per kind of user input, shared by the command line and the dashboard.

* numbers: a :class:`Range` (finite, whole where it must be, within bounds); :func:`arg_type` makes an
  ``argparse`` type of it, so a flag such as ``--lr nan`` is refused before any work;
* paths: :func:`path_arg` (a path is never empty text), :func:`store_path` (a run store is a file or
  nothing: never a folder);
* JSON a user hands in: :func:`parse_json` (bounded size and depth, a key given twice refused);
* labels: :func:`label_name` (one spelling per class: ``1``, ``1.0``, `` +1 `` and ``１`` are one label).

Every check raises a one-line ``ValueError`` naming the input (an ``argparse.ArgumentTypeError`` for a
flag). Cost: constant per value, one pass over a JSON text.
"""

from __future__ import annotations

import argparse
import json
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_COUNT = 2**31 - 1  # the largest whole number a count flag takes (steps, batches, examples)
MAX_JSON_BYTES = 64 * 2**20  # a plan or lowrank.json of a model with millions of layers is far below this
MAX_JSON_DEPTH = 32  # plans and lowrank.json nest 3 deep; anything far deeper is not one of them
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")  # a file named so is meant to be a database


@dataclass(frozen=True)
class Range:
    """The numbers an input accepts: finite, between ``low`` and ``high`` (``None``: unbounded; an open
    end excludes its bound), an ``int`` when ``integer`` (``64.0`` is no layer count)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        low, high = _show(self.low), _show(self.high)
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {high}"
        return kind

    def check(self, value, what: str):
        """``value`` when it is in the range; ``ValueError`` naming ``what`` otherwise (a boolean is no number)."""
        number = isinstance(value, int if self.integer else (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ValueError(f"{what} must be {self.describe()}, got {value!r}")
        return value


def _show(bound: float | None) -> str:
    return "" if bound is None else str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


POSITIVE = Range(0, low_open=True)  # learning rates, epochs, tolerances
COUNT = Range(1, MAX_COUNT, integer=True)  # steps, batches, examples, sizes
FRACTION = Range(0, 1, low_open=True)  # a kept fraction: (0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)  # a pruning target or tolerance: (0, 1)
UNIT = Range(0, 1)  # a probability or a share of the steps: [0, 1]
THREADS = Range(1, 1024, integer=True)


def finite(value, what: str) -> float:
    """``value`` when it is a finite number (NaN and infinities are refused)."""
    return Range().check(value, what)


def arg_type(limits: Range, flag: str) -> Callable[[str], int | float]:
    """An ``argparse`` type reading ``flag``'s text as a number within ``limits`` (``ArgumentTypeError`` otherwise)."""

    kind = int if limits.integer else float

    def read(text: str):
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"invalid {kind.__name__} value: {text!r} ({flag} must be {limits.describe()})"
            ) from err
        try:
            return limits.check(value, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    read.__name__ = flag
    read.limits = limits  # what the flag accepts, for listings and tests
    return read


def path_arg(flag: str) -> Callable[[str], str]:
    """An ``argparse`` type for a path flag: refuses empty text (``--out ''`` would otherwise mean "no output")."""

    def read(text: str) -> str:
        if not text.strip() or "\0" in text:
            raise argparse.ArgumentTypeError(f"{flag} needs a path, got {text!r}")
        return text

    read.__name__ = flag
    return read


def store_path(path: str | Path) -> Path:
    """``path`` when a run store may live there: nothing yet, an SQLite database (by its header), or a file
    named like one (:data:`STORE_SUFFIXES`: a damaged store is moved aside and kept). Never a folder, and
    never another file of the user's: a store is created only where nothing exists. Cost: one 16-byte read."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the run store is a file (give a file path, e.g. {path / 'runs.sqlite'})")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{path}: {path.parent} is a file, not a folder")
    if path.exists() and path.suffix.lower() not in STORE_SUFFIXES:
        with open(path, "rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise ValueError(
                    f"{path} is not a run store (not an SQLite database); give a path where nothing exists yet"
                )
    return path


def _no_duplicates(what: str) -> Callable[[list], dict]:
    def pairs_hook(pairs: list) -> dict:
        data = dict(pairs)
        if len(data) != len(pairs):
            seen: set = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"{what}: the key {twice!r} is given twice (which one is meant?)")
        return data

    return pairs_hook


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(text: str | bytes, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """The JSON value of ``text`` (a file's or an upload's content), for input from a user.

    Refused with a one-line ``ValueError`` naming ``what``: more than ``max_bytes``, not UTF-8, not JSON,
    nested deeper than ``max_depth``, an object with a key given twice, or ``NaN`` / ``Infinity``
    (not JSON). Cost: one parse and one walk of the value.
    """
    if len(text) > max_bytes:
        raise ValueError(
            f"{what} is {len(text) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB a JSON input may be"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{what} is not valid JSON: it is not UTF-8 text") from err

    def constant(name: str):
        raise ValueError(f"{what} is not valid JSON: {name} is not a JSON number")

    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates(what), parse_constant=constant)
    except RecursionError as err:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON: {err}") from err
    if _depth(data) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels")
    return data


def label_name(value) -> str:
    """The one spelling of a class label: Unicode compatibility form (NFKC), surrounding space removed, and a
    number written canonically (``1``, ``1.0``, ``+1``, ``01`` -> ``1``; ``0.50`` -> ``0.5``). Other text is
    kept as it is (case included)."""
    text = unicodedata.normalize("NFKC", str(value)).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or "_" in text:  # "nan", "inf" and "1_0" are names, not numbers
        return text
    try:
        return str(int(text))  # exact for whole numbers of any size
    except ValueError:
        return str(int(number)) if number.is_integer() else repr(number)
