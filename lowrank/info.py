"""``CompressionInfo``: what was done to a compressed model, and its file ``lowrank.json``.

One record per compressed model: the base model and its kind, the method and its scalar options,
and per factorized layer its rank ``r`` (``W`` (out, in) became ``U`` (out, r) ``V`` (r, in)), the
seconds its factorization took, the iterative solver's error history and the method's scalar facts;
for a model compressed block by block, also how its statistics were gathered (``sequential``); for a method
with data-derived statistics, the calibration sample (``calibration``: task, split, examples, tokens, seed); for a
healed model, how it was healed and its held-out losses before and after (``healing``, :func:`lowrank.heal`).

:meth:`CompressionInfo.to_json` and :meth:`CompressionInfo.from_json` are the one writer and the one
reader of the format (``format_version`` :data:`FORMAT_VERSION`); the reader refuses another version,
a missing field or a field of the wrong type with a one-line ``ValueError``. :func:`save_info` and
:func:`load_info` put it in a model folder and take it out. Cost: one small JSON file, no weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lowrank.layers import FORMS
from lowrank.models.errors import ModelLoadError
from lowrank.validate import parse_json

FORMAT_VERSION = 1
INFO_FILE = "lowrank.json"
SCALARS = (int, float, str, bool)


def scalars(values: Mapping) -> dict:
    """The entries of ``values`` that ``lowrank.json`` keeps: numbers, strings and booleans."""
    return {k: v for k, v in values.items() if isinstance(v, SCALARS)}


@dataclass
class CompressionInfo:
    """What was done to a model; attached to it as ``model.lowrank_info`` and saved as ``lowrank.json``."""

    base_model: str
    kind: str
    method: str
    ranks: dict[str, int]
    options: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)  # per layer: the method's scalar facts (info)
    sequential: dict = field(default_factory=dict)  # block by block: statistics, examples, blocks; else empty
    calibration: dict = field(default_factory=dict)  # the calibration sample (passes.calibration_record); else empty
    # the fastest form per factorized layer (lowrank.speed.optimize_speed): settings, conditions, layers; else empty.
    # A layer merged back to dense is absent from ranks and recorded here ({"form": "dense", "rank": r, ...}).
    speed: dict = field(default_factory=dict)
    healing: dict = field(default_factory=dict)  # lowrank.heal's recipe and held-out losses; else empty

    def regularizers(self) -> dict[str, int]:
        """How many layers needed each numerical regularizer (whitening methods); empty when none was recorded."""
        counts: dict[str, int] = {}
        for facts in self.details.values():
            for key in ("regularizer", "grad_regularizer"):
                if key in facts:
                    label = facts[key] if key == "regularizer" else f"gradients: {facts[key]}"
                    counts[label] = counts.get(label, 0) + 1
        return counts

    def to_json(self) -> dict:
        """The ``lowrank.json`` object (``sequential``, ``calibration``, ``speed`` and ``healing`` only when they are
        recorded: a file without them reads as before)."""
        data = {"format_version": FORMAT_VERSION, **asdict(self)}
        for key in ("sequential", "calibration", "speed", "healing"):
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data) -> CompressionInfo:
        """The info a ``lowrank.json`` object records; ``ValueError`` (one line) when it is not one."""
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported lowrank.json format {version}")
        if not isinstance(data.get("ranks"), dict) or "base_model" not in data:
            raise ValueError("needs 'base_model' and a 'ranks' object")
        for key in ("base_model", "kind", "method"):
            _check(key, data.get(key, ""), (str,), "a string")
        for key in ("options", "seconds", "history", "details", "sequential", "calibration", "speed", "healing"):
            _check(key, data.get(key, {}), (dict,), "an object")
        for name, rank in data["ranks"].items():
            _check(f"ranks.{name}", rank, (int,), "an integer")
        for name, seconds in data.get("seconds", {}).items():
            _check(f"seconds.{name}", seconds, (int, float), "a number")
        for name, errors in data.get("history", {}).items():
            _check(f"history.{name}", errors, (list,), "a list")
            for error in errors:
                _check(f"history.{name}", error, (int, float), "a list of numbers")
        for name, facts in data.get("details", {}).items():
            _check(f"details.{name}", facts, (dict,), "an object")
        speed_layers = data.get("speed", {}).get("layers", {})
        _check("speed.layers", speed_layers, (dict,), "an object")
        for name, entry in speed_layers.items():
            _check(f"speed.layers.{name}", entry, (dict,), "an object")
            if entry.get("form") not in FORMS:
                raise ValueError(
                    f"'speed.layers.{name}.form' must be one of {', '.join(FORMS)}, got {entry.get('form')!r}"
                )
        return cls(**{"kind": "", "method": ""} | {f.name: data[f.name] for f in fields(cls) if f.name in data})


def _check(key: str, value, types: tuple[type, ...], what: str) -> None:
    """``ValueError`` naming ``key`` unless ``value`` is one of ``types`` (a boolean is never a number)."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"'{key}' must be {what}, got {json.dumps(value)[:60]}")


def save_info(info: CompressionInfo, folder: str | Path) -> None:
    """Write ``info`` as ``folder/lowrank.json``."""
    (Path(folder) / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2))


def load_info(folder: str | Path) -> CompressionInfo:
    """The :class:`CompressionInfo` saved in ``folder`` (its ``lowrank.json``), without loading any weights.

    A missing, unreadable or malformed file raises :class:`ModelLoadError` (a ``ValueError``, one line)."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not a compressed model folder (no {INFO_FILE})")
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as err:
        raise ModelLoadError(f"{path}: not readable ({err.strerror or err})") from err
    except ValueError as err:
        raise ModelLoadError(f"{path}: not readable JSON ({err})") from err
    try:
        return CompressionInfo.from_json(data)
    except ValueError as err:
        raise ModelLoadError(f"{path}: {err}") from err
