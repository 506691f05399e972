"""The statistic kinds: one row per kind says what it provides, how it is computed and how a person reads it.

A kind provides per-layer tensors under its ``keys`` (``{layer: {key: tensor}}``). It is either read
off the model's weights (``from_model``: ``mask``) or collected during a calibration pass by
per-Linear hooks (``collector``), with a backward pass of the task loss when ``backward``. Kinds with
the same :class:`Collector` share one pass and one cache entry (``activations`` and ``gradients``: one
:class:`~lowrank.statistics.moments.MomentCollector`). Whatever computes, checks or names statistics
(the resolver :mod:`.resolve`, the layer-sequential sweeps :mod:`.blockwise`) reads this table only, so a
new kind is one :func:`register_statistic` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lowrank.statistics.collectors import SquaredGradients
from lowrank.statistics.moments import CrossMomentCollector, MomentCollector
from lowrank.statistics.settings import StatisticsSettings

LayerStats = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Collector:
    """Per-Linear hooks of one calibration pass: ``make(linear, backward, settings)`` returns an object with ``scale``,
    ``mask``, ``accumulators()``, ``result(examples) -> {key: tensor}`` and ``remove()``; cached under
    ``<cache>/<folder>/``; ``what`` names the pass on progress bars."""

    folder: str
    make: Callable[[nn.Linear, bool, StatisticsSettings], object]
    what: str


@dataclass(frozen=True)
class StatisticKind:
    """A statistic kind: its per-layer ``keys`` (with shapes in ``description``), its ``label`` for people, and
    how it is computed: ``collector`` (a calibration pass over task data, back-propagated when ``backward``) or
    ``from_model`` (read off the weights, no data). A ``sweep_only`` kind compares the dense model with the model
    compressed so far, so only the block sweep (:func:`lowrank.statistics.blockwise.forward_sweep` with
    ``inputs="compensated"``) computes it, never a single calibration pass."""

    name: str
    keys: tuple[str, ...]
    label: str
    description: str
    collector: Collector | None = None
    backward: bool = False
    from_model: Callable[[nn.Module], LayerStats] | None = None
    sweep_only: bool = False

    @property
    def needs_task(self) -> bool:
        """True when computing it takes task data (a calibration pass)."""
        return self.collector is not None


def _weight_mask(linears: dict[str, nn.Linear]) -> LayerStats:
    return {name: {"mask": (m.weight.detach() != 0).float().cpu()} for name, m in linears.items()}


FISHER_PASS = Collector(
    "fisher", lambda linear, backward, settings: SquaredGradients(linear), "estimating Fisher information"
)
MOMENT_PASS = Collector("moments", MomentCollector, "input/gradient moments")
COMPENSATION_PASS = Collector("compensation", CrossMomentCollector, "dense/compressed input moments")

STATISTIC_KINDS: dict[str, StatisticKind] = {}


def register_statistic(kind: StatisticKind) -> StatisticKind:
    """Add ``kind`` to :data:`STATISTIC_KINDS` (methods may then declare it in ``needs``)."""
    if kind.collector is None and kind.from_model is None:
        raise ValueError(f"statistic kind {kind.name!r} needs a collector or a from_model reader")
    STATISTIC_KINDS[kind.name] = kind
    return kind


register_statistic(
    StatisticKind(
        "fisher",
        ("fisher",),
        "Fisher information",
        "'fisher': empirical/true Fisher information of the weight, (out, in)",
        FISHER_PASS,
        backward=True,
    )
)
register_statistic(
    StatisticKind(
        "mask",
        ("mask",),
        "pruning mask",
        "'mask': non-negative weights that are zero on pruned entries (a 0/1 mask or mask x scores), (out, in)",
        from_model=_weight_mask,
    )
)
register_statistic(
    StatisticKind(
        "activations",
        ("input_moment", "input_abs_mean"),
        "input activation statistics",
        "'input_moment': E[x x^T] of the layer input, (in, in); 'input_abs_mean': E|x|, (in,)",
        MOMENT_PASS,
    )
)
register_statistic(
    StatisticKind(
        "gradients",
        ("grad_moment",),
        "output gradient statistics",
        "'grad_moment': E[g g^T] of the output gradient, (out, out)",
        MOMENT_PASS,
        backward=True,
    )
)

register_statistic(
    StatisticKind(
        "compensation",
        ("cross_moment", "compressed_moment", "fold_cross_moment", "fold_compressed_moment", "fold_tokens"),
        "dense/compressed input moments",
        "'cross_moment': E[x x_hat^T] of the layer's dense input x and its input x_hat in the model compressed so "
        "far, (in, in); 'compressed_moment': E[x_hat x_hat^T], (in, in); 'fold_*': the same over each fold of the "
        "calibration windows (FOLDS, in, in) and its tokens (FOLDS,)",
        COMPENSATION_PASS,
        sweep_only=True,
    )
)


def statistic_kind(name: str) -> StatisticKind:
    if name not in STATISTIC_KINDS:
        raise ValueError(f"unknown statistic kind {name!r}; known: {', '.join(STATISTIC_KINDS)}")
    return STATISTIC_KINDS[name]


def check_kinds(needs) -> tuple[str, ...]:
    """``needs`` without repeats, in order; ``ValueError`` for a kind that is not in the table."""
    needs = tuple(dict.fromkeys(needs))
    unknown = [k for k in needs if k not in STATISTIC_KINDS]
    if unknown:
        raise ValueError(f"unknown statistic kind(s) {', '.join(unknown)}; known: {', '.join(STATISTIC_KINDS)}")
    return needs


def swept_kinds(needs) -> list[str]:
    """The kinds of ``needs`` only a block sweep computes (``sweep_only``: they compare the dense model with the
    model compressed so far)."""
    return [k for k in needs if k in STATISTIC_KINDS and STATISTIC_KINDS[k].sweep_only]


def statistics_label(needs) -> str:
    """``("fisher", "mask")`` -> ``"Fisher information and pruning mask"`` (an unknown kind shows as its name)."""
    return " and ".join(STATISTIC_KINDS[k].label if k in STATISTIC_KINDS else k for k in needs)
