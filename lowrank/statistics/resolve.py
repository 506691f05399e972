"""The one resolver from what a method or strategy *needs* to the per-layer statistics it gets.

``statistics_for(loaded, task, needs, settings)`` returns ``{layer: {key: tensor}}`` for
every compressible layer, computing (or reading from the cache) each statistic kind once:

* ``fisher``: :func:`lowrank.statistics.fisher.estimate_fisher` (key ``fisher``);
* ``mask``: the non-zero pattern of the model's own weights (key ``mask``, 0/1): what a
  pruned model keeps;
* ``activations`` / ``gradients``: input and output-gradient second moments
  (:mod:`lowrank.statistics.moments`; keys ``input_moment``, ``input_abs_mean``,
  ``grad_moment``), both from one calibration pass when both are needed.

Every caller (CLI, sweeps, LPAF, allocation, dashboard, benchmarks) goes through here, so
which sample a statistic is computed on is decided in one place (:mod:`.settings`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lowrank.data.tasks import load_task
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, scaled
from lowrank.statistics import cache
from lowrank.statistics.fisher import estimate_fisher
from lowrank.statistics.moments import estimate_moments
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

Stats = dict[str, dict[str, torch.Tensor]]


def _fisher(loaded, task, settings, use_cache, progress, needs) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {"fisher": F} for n, F in estimate_fisher(loaded, task, settings, use_cache, progress).items()}


def _mask(loaded, task, settings, use_cache, progress, needs) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {"mask": (m.weight.detach() != 0).float().cpu()} for n, m in compressible_linears(loaded.model).items()}


def _moments(loaded, task, settings, use_cache, progress, needs) -> dict[str, dict[str, torch.Tensor]]:
    return estimate_moments(loaded, task, settings, "gradients" in needs, use_cache, progress)


# kind -> (computes, needs a task, cache folder or None when never cached); kinds sharing a function share its pass
PROVIDERS = {
    "fisher": (_fisher, True, "fisher"),
    "mask": (_mask, False, None),
    "activations": (_moments, True, "moments"),
    "gradients": (_moments, True, "moments"),
}


# kind -> the per-layer keys it provides
KEYS = {
    "fisher": ("fisher",),
    "mask": ("mask",),
    "activations": ("input_moment", "input_abs_mean"),
    "gradients": ("grad_moment",),
}


def restrict(stats: Stats, needs: Iterable[str]) -> Stats:
    """Only the keys of the kinds in ``needs``: what :func:`statistics_for` returns for ``needs`` alone, taken from
    statistics computed for more (so each method of a comparison sees exactly what it would get on its own)."""
    keys = {key for kind in _check(needs) for key in KEYS[kind]}
    return {name: {k: v for k, v in tensors.items() if k in keys} for name, tensors in stats.items()}


def needs_task(needs: Iterable[str]) -> bool:
    """True when any of ``needs`` is computed from task data (a calibration pass)."""
    return any(PROVIDERS[kind][1] for kind in needs if kind in PROVIDERS)


def _check(needs: Iterable[str]) -> tuple[str, ...]:
    needs = tuple(dict.fromkeys(needs))
    unknown = [k for k in needs if k not in PROVIDERS]
    if unknown:
        raise ValueError(f"no provider for statistic(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
    return needs


def statistics_for(
    loaded,
    task,
    needs: Iterable[str],
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> Stats:
    """``{layer: {key: tensor}}`` with every statistic kind of ``needs`` for each compressible layer.

    ``task`` may be ``None`` when no kind needs data. Empty ``needs`` gives ``{}``.
    """
    needs = _check(needs)
    if not needs:
        return {}
    task = check_labels(loaded, task) if needs_task(needs) else task  # before any pass: the labels fit the model
    stats: Stats = {}
    providers = list(dict.fromkeys(PROVIDERS[kind][0] for kind in needs))
    for step, compute in enumerate(providers):
        part = compute(
            loaded,
            task,
            settings,
            use_cache,
            scaled(progress, step / len(providers), (step + 1) / len(providers)),
            needs,
        )
        for name, tensors in part.items():
            stats.setdefault(name, {}).update(tensors)
    return stats


def is_cached(loaded, task, needs: Iterable[str], settings: StatisticsSettings = DEFAULT) -> bool:
    """True when every data-derived kind of ``needs`` is already in the cache (computing it is then free)."""
    task = load_task(task)
    needs = _check(needs)
    keys = {"fisher": settings.to_dict(), "moments": {**settings.to_dict(), "gradients": "gradients" in needs}}
    folders = {PROVIDERS[k][2] for k in needs if PROVIDERS[k][2]}
    return all(cache.entry_path(folder, loaded, task, keys[folder]).exists() for folder in folders)


def select(stats: Stats, key: str) -> dict[str, torch.Tensor]:
    """``{layer: stats[layer][key]}``, for code that works on one tensor per layer (e.g. Fisher maps)."""
    return {name: tensors[key] for name, tensors in stats.items() if key in tensors}
