"""Rank plans: per-layer ranks under a parameter budget, their JSON file, and the one reader of it.

A plan lists every compressible layer with its rank (``None``: dense) and predicted loss
increase; a layer at rank ``r`` costs ``r * (out + in)`` parameters, a dense one ``out * in``,
and ``plan.params`` is their sum, to compare with ``plan.budget``. ``plan.ranks``
({name: rank} of the factorized layers) goes straight to ``compress``.

The file (:meth:`RankPlan.save`) is JSON with ``"format": "lowrank-plan"``, a version, the
budget, the layers and a top-level ``"ranks"`` object. :func:`read_ranks` reads the ranks of
such a file or of any JSON object with a ``"ranks"`` mapping (what ``compress --plan``
takes); :meth:`RankPlan.load` reads a whole plan; :meth:`RankPlan.check_layers` checks a
plan against a model's layer shapes. Every problem is a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.allocation.curves import loss_at
from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.jsonable import to_jsonable
from lowrank.files.outputs import writable_file
from lowrank.layers import check_rank
from lowrank.validate import MAX_JSON_BYTES, parse_json

PLAN_FORMAT = "lowrank-plan"
PLAN_VERSION = 1


def _whole(value, what: str, minimum: int) -> int:
    """``value`` as an int when it is a whole number >= ``minimum`` (never truncated: 0.5 is refused, not 0)."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not number or not math.isfinite(value) or value != int(value) or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class PlannedLayer:
    """One layer of a plan: ``rank`` None means the layer stays dense."""

    name: str
    out_features: int
    in_features: int
    rank: int | None
    predicted_loss: float = math.nan

    @property
    def dense(self) -> bool:
        return self.rank is None

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def params(self) -> int:
        return self.dense_params if self.rank is None else self.rank * (self.out_features + self.in_features)


@dataclass
class RankPlan:
    """Per-layer ranks under a parameter budget (counts of compressible Linear weights).

    ``ranks`` ({name: rank} of factorized layers) feeds ``compress``; ``to_json`` holds a
    top-level ``"ranks"`` object, which ``python -m lowrank compress --plan`` reads.
    ``budget`` is a parameter count >= 1 and ``align`` an integer >= 1 (``ValueError`` otherwise).
    """

    layers: list[PlannedLayer]
    budget: int
    strategy: str
    align: int = DEFAULT_ALIGN
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.budget = _whole(self.budget, "the budget (a parameter count)", 1)
        self.align = _whole(self.align, "align", 1)

    @property
    def ranks(self) -> dict[str, int]:
        return {layer.name: layer.rank for layer in self.layers if layer.rank is not None}

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def dense_params(self) -> int:
        return sum(layer.dense_params for layer in self.layers)

    @property
    def predicted_loss(self) -> float:
        """Sum of the layers' predicted loss increases (NaN when importance was not known)."""
        return float(sum(layer.predicted_loss for layer in self.layers))

    @property
    def within_budget(self) -> bool:
        return self.params <= self.budget

    def layer(self, name: str) -> PlannedLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this plan")

    def with_ranks(self, changes: dict[str, int | None], curves: dict[str, np.ndarray] | None = None) -> RankPlan:
        """A copy with some ranks changed (None: dense), e.g. edited by hand.

        Ranks are checked like ``compress`` does (1 <= r, below break-even); alignment is not
        enforced. Predicted losses come from ``curves`` (:func:`~lowrank.allocation.curves.layer_loss_curves`)
        when given, else they are NaN for the changed layers. The budget is kept; see ``within_budget``.
        """
        names = {layer.name for layer in self.layers}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"not layers of this plan: {unknown[:5]}")
        layers = []
        for layer in self.layers:
            if layer.name not in changes:
                layers.append(PlannedLayer(**vars(layer)))
                continue
            rank = changes[layer.name]
            if rank is not None:
                check_rank(rank, layer.out_features, layer.in_features, layer.name)
            layers.append(
                PlannedLayer(layer.name, layer.out_features, layer.in_features, rank, loss_at(curves, layer.name, rank))
            )
        return RankPlan(layers, self.budget, self.strategy, self.align, {**self.meta, "edited": True})

    def check_layers(self, shapes: dict[str, tuple[int, int]], model: str = "the model") -> None:
        """``ValueError`` unless the plan has exactly the layers of ``shapes`` ({name: (out, in)}), with those shapes."""
        names = {layer.name for layer in self.layers}
        if names != set(shapes):
            raise ValueError(
                f"the plan's layers do not match {model} "
                f"({len(names & set(shapes))} of {len(shapes)} layer names in common)"
            )
        for layer in self.layers:
            out_f, in_f = shapes[layer.name]
            if (layer.out_features, layer.in_features) != (out_f, in_f):
                raise ValueError(
                    f"{layer.name} is {layer.out_features}×{layer.in_features} in the plan but "
                    f"{out_f}×{in_f} in {model}"
                )

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: name, out, in, rank (None = dense), params, dense_params, predicted_loss, dense."""
        rows = [
            {
                "name": layer.name,
                "out": layer.out_features,
                "in": layer.in_features,
                "rank": layer.rank,
                "params": layer.params,
                "dense_params": layer.dense_params,
                "predicted_loss": layer.predicted_loss,
                "dense": layer.dense,
            }
            for layer in self.layers
        ]
        columns = ["name", "out", "in", "rank", "params", "dense_params", "predicted_loss", "dense"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["rank"] = frame["rank"].astype("Int64")
        return frame

    def to_dict(self) -> dict:
        return to_jsonable(
            {
                "format": PLAN_FORMAT,
                "version": PLAN_VERSION,
                "strategy": self.strategy,
                "budget": self.budget,
                "align": self.align,
                "params": self.params,
                "dense_params": self.dense_params,
                "predicted_loss": self.predicted_loss,
                "ranks": self.ranks,
                "layers": [
                    {
                        "name": layer.name,
                        "out": layer.out_features,
                        "in": layer.in_features,
                        "rank": layer.rank,
                        "predicted_loss": layer.predicted_loss,
                    }
                    for layer in self.layers
                ],
                "meta": self.meta,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | bytes | dict) -> RankPlan:
        """Rebuild a plan from :meth:`to_json` output (a JSON string) or :meth:`to_dict` output (a dict).

        Checks the format and version, that every number is a whole number (a budget of 0.5 is
        refused, not truncated to 0), the budget and ``align`` >= 1, every rank below break-even,
        and that the ``ranks`` object agrees with the layers.
        """
        if isinstance(data, (str, bytes)):
            data = parse_json(data, "a rank plan")
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f'not a rank plan (expected an object with "format": "{PLAN_FORMAT}")')
        if data.get("version") != PLAN_VERSION:
            raise ValueError(
                f"unsupported rank plan version {data.get('version')!r} (this library reads {PLAN_VERSION})"
            )
        try:
            layers = [_planned_layer(row) for row in data["layers"]]
            plan = cls(
                layers,
                data["budget"],
                str(data["strategy"]),
                data.get("align", DEFAULT_ALIGN),
                dict(data.get("meta") or {}),
            )
        except KeyError as err:
            raise ValueError(f"malformed rank plan: missing {err}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"malformed rank plan: {err}") from err
        for layer in plan.layers:
            if layer.rank is not None:
                check_rank(layer.rank, layer.out_features, layer.in_features, layer.name)
        if "ranks" in data:
            if not isinstance(data["ranks"], dict):
                raise ValueError("malformed rank plan: its 'ranks' must be an object {layer: rank}")
            if {str(k): v for k, v in data["ranks"].items()} != plan.ranks:
                raise ValueError("malformed rank plan: its 'ranks' object disagrees with its 'layers' list")
        return plan

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically; an existing file is replaced only if it is a rank plan
        (:func:`lowrank.files.outputs.writable_file`), so no other file is ever overwritten."""
        path = writable_file(path, _is_plan)
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> RankPlan:
        """The whole plan saved at ``path`` (:meth:`save`), checked like :meth:`from_json`."""
        data = _read_json(path)
        try:
            return cls.from_json(data)
        except ValueError as err:
            raise ValueError(f"plan file {path}: {err}") from err


def _is_plan(data: bytes) -> bool:
    """True when ``data`` is a rank plan this library reads (what :meth:`RankPlan.save` may replace)."""
    try:
        RankPlan.from_json(data)
    except ValueError:
        return False
    return True


def _planned_layer(row: dict) -> PlannedLayer:
    name = str(row["name"])
    rank = None if row["rank"] is None else _whole(row["rank"], f"the rank of {name}", 1)
    loss = math.nan if row.get("predicted_loss") is None else float(row["predicted_loss"])
    return PlannedLayer(
        name,
        _whole(row["out"], f"the out size of {name}", 1),
        _whole(row["in"], f"the in size of {name}", 1),
        rank,
        loss,
    )


def _read_json(path: str | Path):
    """The JSON value in the file at ``path``; a one-line ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"plan file {path} is a folder, not a JSON file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"plan file {path} is over the {MAX_JSON_BYTES // 2**20} MB a JSON input may be")
        text = path.read_bytes()
    except FileNotFoundError as err:
        raise ValueError(f"plan file not found: {path}") from err
    except OSError as err:
        raise ValueError(f"cannot read plan file {path}: {err.strerror}") from err
    return parse_json(text, f"plan file {path}")


def read_ranks(path: str | Path) -> dict[str, int]:
    """``{layer: rank}`` from a plan file: a saved :class:`RankPlan` (checked whole, see
    :meth:`RankPlan.from_json`) or any JSON object with a ``"ranks"`` mapping of whole ranks >= 1.

    Raises a one-line ``ValueError`` naming the file when it is missing, a folder, not JSON
    (:func:`lowrank.validate.parse_json`: a layer given twice included), without a ``ranks`` object
    or with an empty one, or holds a bad rank. Break-even is checked by ``compress``,
    which knows the shapes.
    """
    data = _read_json(path)
    saved_plan = isinstance(data, dict) and data.get("format") == PLAN_FORMAT
    ranks = data.get("ranks") if isinstance(data, dict) else None
    if not saved_plan and not isinstance(ranks, dict):
        raise ValueError(f"plan file {path} must hold an object with a 'ranks' mapping {{layer: rank}}")
    if not saved_plan and not ranks:
        raise ValueError(f"plan file {path}: its 'ranks' mapping lists no layer (nothing to factorize)")
    try:
        if saved_plan:
            return RankPlan.from_json(data).ranks
        return {str(k): _whole(v, f"the rank of {k}", 1) for k, v in ranks.items()}
    except ValueError as err:
        raise ValueError(f"plan file {path}: {err}") from err
