"""The one resolver from what a method or strategy *needs* to the per-layer statistics it gets.

``statistics_for(loaded, task, needs, settings)`` returns ``{layer: {key: tensor}}`` for every
compressible layer. Each kind of ``needs`` is computed as its row of :data:`.kinds.STATISTIC_KINDS`
says: read off the weights, or collected in a calibration pass (:func:`.passes.calibration_pass`) of
``settings``' sample, one pass for all kinds that share a collector, cached on disk under a key of the
model's weights, the task's data, the settings and whether the pass back-propagates
(:mod:`.cache`). Cost: one forward (and, for a backward kind, one backward) pass per collector.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from lowrank.data.tasks import load_task
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, scaled
from lowrank.statistics import cache
from lowrank.statistics.fisher import backward_task_losses
from lowrank.statistics.kinds import STATISTIC_KINDS, Collector, StatisticKind, check_kinds, swept_kinds
from lowrank.statistics.passes import calibration_pass, calibration_task, is_main
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

Stats = dict[str, dict[str, torch.Tensor]]


def restrict(stats: Stats, needs: Iterable[str]) -> Stats:
    """Only the keys of the kinds in ``needs``: what :func:`statistics_for` returns for ``needs`` alone, taken from
    statistics computed for more (so each method of a comparison sees exactly what it would get on its own)."""
    keys = {key for kind in check_kinds(needs) for key in STATISTIC_KINDS[kind].keys}
    return {name: {k: v for k, v in tensors.items() if k in keys} for name, tensors in stats.items()}


def needs_task(needs: Iterable[str]) -> bool:
    """True when any of ``needs`` is computed from task data (a calibration pass)."""
    return any(STATISTIC_KINDS[kind].needs_task for kind in check_kinds(needs))


def passes(needs: Iterable[str]) -> dict[Collector, tuple[StatisticKind, ...]]:
    """The calibration passes ``needs`` takes: each collector with the kinds it computes."""
    groups: dict[Collector, tuple[StatisticKind, ...]] = {}
    for name in check_kinds(needs):
        kind = STATISTIC_KINDS[name]
        if kind.collector is not None:
            groups[kind.collector] = groups.get(kind.collector, ()) + (kind,)
    return groups


def computations(needs: Iterable[str]) -> list[tuple[str, ...]]:
    """``needs`` grouped by what computes them: the kinds of one calibration pass together, each kind read off
    the weights alone (so a caller caching per group never runs one pass twice)."""
    needs = check_kinds(needs)
    alone = [(k,) for k in needs if STATISTIC_KINDS[k].collector is None]
    return alone + [tuple(k.name for k in kinds) for kinds in passes(needs).values()]


def _entry(collector: Collector, kinds: tuple[StatisticKind, ...], loaded, task, settings: StatisticsSettings):
    """The pass's cache key (settings and whether it back-propagates) and its cache file."""
    key = {**settings.to_dict(), "gradients": any(k.backward for k in kinds)}
    return key, cache.entry_path(collector.folder, loaded, task, key)


def _collect(collector, kinds, loaded, task, settings, use_cache: bool, progress: Progress | None) -> Stats:
    """One calibration pass with ``collector``'s hooks on every compressible Linear (or its cache entry)."""
    key, path = _entry(collector, kinds, loaded, task, settings)
    if use_cache and (cached := cache.read(path)) is not None:
        return _unflatten(cached)
    linears = compressible_linears(loaded.model)
    if not linears:
        raise ValueError(f"{loaded.name} has no compressible Linear layers")
    backward = key["gradients"]
    hooks = {name: collector.make(module, backward, settings) for name, module in linears.items()}
    examples = calibration_pass(loaded, task, hooks, settings, backward_task_losses, backward, progress, collector.what)
    result = {}
    for name in list(hooks):  # each accumulator is freed once its result exists
        result[name] = hooks.pop(name).result(examples)
    if use_cache and is_main():
        cache.write(path, {f"{n}::{k}": v for n, t in result.items() for k, v in t.items()}, key)
    return result


def _unflatten(flat: dict[str, torch.Tensor]) -> Stats:
    out: Stats = {}
    for key, tensor in flat.items():
        name, _, kind = key.rpartition("::")
        out.setdefault(name, {})[kind] = tensor
    return out


def statistics_for(
    loaded,
    task,
    needs: Iterable[str],
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> Stats:
    """``{layer: {key: tensor}}`` with every statistic kind of ``needs`` for each compressible layer.

    ``task`` may be ``None`` when no kind needs data; ``settings.task``, when set, replaces it (the calibration
    corpus). Empty ``needs`` gives ``{}``. Tensors are float32 on
    the CPU.
    """
    needs = check_kinds(needs)
    if not needs:
        return {}
    task = calibration_task(task, settings)
    swept = swept_kinds(needs)
    if swept:
        raise ValueError(
            f"{', '.join(swept)} statistics compare the dense model with the model compressed so far: only the block "
            "sweep computes them (lowrank.compress_in_blocks, lowrank.compress_sequential or --sequential)"
        )
    task = check_labels(loaded, task) if needs_task(needs) else task  # before any pass: the labels fit the model
    stats: Stats = {}
    parts = [
        STATISTIC_KINDS[k].from_model(compressible_linears(loaded.model))
        for k in needs
        if STATISTIC_KINDS[k].from_model
    ]
    groups = passes(needs)
    for step, (collector, kinds) in enumerate(groups.items()):
        part_progress = scaled(progress, step / len(groups), (step + 1) / len(groups))
        collected = _collect(collector, kinds, loaded, task, settings, use_cache, part_progress)
        parts.append(restrict(collected, (k.name for k in kinds)))
    for part in parts:
        for name, tensors in part.items():
            stats.setdefault(name, {}).update(tensors)
    return stats


def cache_entries(loaded, task, needs: Iterable[str], settings: StatisticsSettings = DEFAULT) -> list[Path]:
    """The cache files :func:`statistics_for` reads and writes for ``needs``: one per calibration pass."""
    task = load_task(calibration_task(task, settings))
    return [_entry(c, kinds, loaded, task, settings)[1] for c, kinds in passes(needs).items()]


def is_cached(loaded, task, needs: Iterable[str], settings: StatisticsSettings = DEFAULT) -> bool:
    """True when every data-derived kind of ``needs`` is already in the cache (computing it is then free)."""
    return all(path.exists() for path in cache_entries(loaded, task, needs, settings))


def select(stats: Stats, key: str) -> dict[str, torch.Tensor]:
    """``{layer: stats[layer][key]}``, for code that works on one tensor per layer (e.g. Fisher maps)."""
    return {name: tensors[key] for name, tensors in stats.items() if key in tensors}
