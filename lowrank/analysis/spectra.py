"""Per-matrix singular-value spectra and rank statistics.

For ``W`` (out, in) with singular values ``s_1 >= ... >= s_n``: energy curve
``e_k = sum_{i<=k} s_i^2 / sum_i s_i^2``; ``rank_p`` the smallest ``k`` with ``e_k >= p`` (p = 90/95/99%);
effective rank ``exp(H(p))``, ``p_i = s_i / sum s`` (Roy & Vetterli 2007); stable rank ``sum s_i^2 / s_1^2``;
numerical rank ``#{i : s_i > tol * s_1}``. Under a method's metric (``metric=``) the matrix is the one that method
truncates (``W diag(d)`` for fwsvd, ``W L_A`` for svd_llm, ``L_G^T W L_A`` for kfac_svd: ``Method.target``), whose
``sum_{i>r} s_i^2`` is the method's error at rank r. Cost: one SVD per matrix (singular values only), plus the
metric's roots; the plain spectra are cached per model until a weight changes (the tensors' version counters).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from lowrank.loaded import module_of
from lowrank.methods import Method, available_methods, get_method
from lowrank.models.architectures import block_index, compressible_linears, layer_type
from lowrank.progress import Progress, report

ENERGY_LEVELS = (0.90, 0.95, 0.99)
PLAIN = "svd"  # the metric of the plain spectra: the singular values of W

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def singular_values(W: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(W.detach().float()).cpu().double().numpy()


def energy_curve(s: np.ndarray) -> np.ndarray:
    energy = np.cumsum(s**2)
    return energy / energy[-1] if energy[-1] > 0 else np.ones_like(energy)


def energy_rank(s: np.ndarray, level: float) -> int:
    """Smallest k whose rank-k truncation keeps at least ``level`` of the squared Frobenius norm."""
    return int(np.searchsorted(energy_curve(s), level - 1e-12) + 1)


def effective_rank(s: np.ndarray) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(s: np.ndarray) -> float:
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def numerical_rank(s: np.ndarray, tol: float = 1e-3) -> int:
    return int((s > tol * s[0]).sum()) if s[0] > 0 else 0


def rank_statistics(s: np.ndarray, tol: float = 1e-3) -> dict:
    stats = {
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "numerical_rank": numerical_rank(s, tol),
    }
    stats.update({f"rank{int(level * 100)}": energy_rank(s, level) for level in ENERGY_LEVELS})
    return stats


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((n, m.weight._version, m.weight.data_ptr()) for n, m in compressible_linears(model).items())


def metrics() -> list[str]:
    """The methods a spectrum can be taken under: the registered closed forms (those with a ``target``)."""
    return [name for name in available_methods() if get_method(name).target is not None]


def metric_method(metric: str) -> Method:
    """The registered method ``metric`` names; ``ValueError`` when it has no closed form (no ``target``)."""
    method = get_method(metric)
    if method.target is None:
        raise ValueError(
            f"method {metric!r} has no closed form to take a spectrum under; choose one of {', '.join(metrics())}"
        )
    return method


def spectra(
    model,
    progress: Progress | None = None,
    metric: str = PLAIN,
    stats: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    options: Mapping | None = None,
    layers: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row per compressible matrix (``layers``: only these names, in the model's order): name, type, block, out,
    in, params, singular_values, energy (cumulative curve), effective_rank, stable_rank, numerical_rank,
    rank90/95/99, metric.

    ``metric``: a registered closed-form method (:data:`PLAIN` is ``"svd"``: ``W`` itself); the spectrum is that of
    the matrix it truncates, from ``stats`` (``{layer: {key: tensor}}`` with the kinds the method needs, e.g. from
    :func:`lowrank.statistics.statistics_for`) and its ``options``. Accepts a ``LoadedModel`` or an ``nn.Module``;
    the plain spectra of every layer are cached until a weight changes. Cost per layer: the SVD of ``W``, or the
    method's :meth:`~lowrank.methods.registry.Method.target_singular_values`.
    """
    model = module_of(model)
    method = metric_method(metric)
    method.check_options(dict(options or {}))
    linears = compressible_linears(model)
    if layers is not None:
        wanted = set(layers)
        if unknown := wanted - set(linears):
            raise ValueError(f"not compressible layers of this model: {', '.join(sorted(unknown))}")
        linears = {name: module for name, module in linears.items() if name in wanted}
    memo = layers is None and metric == PLAIN  # the whole plain table is kept until a weight changes
    key = _fingerprint(model) if memo else None
    cached = _CACHE.get(model)
    if memo and cached is not None and cached[0] == key:
        return cached[1].copy()
    rows = []
    for i, (name, module) in enumerate(linears.items()):
        report(progress, i, len(linears), f"spectrum of {name}")
        if not bool(torch.isfinite(module.weight).all()):
            raise ValueError(f"{name}: the weight holds NaN or infinite values; its spectrum is undefined")
        layer_stats = (stats or {}).get(name, {})
        method.check_stats(layer_stats, name)
        W = module.weight.detach()
        s = (
            singular_values(W)
            if metric == PLAIN
            else method.target_singular_values(W, layer_stats, **dict(options or {})).cpu().numpy()
        )
        out_f, in_f = module.weight.shape
        rows.append(
            {
                "name": name,
                "type": layer_type(model, name),
                "block": block_index(name),
                "out": out_f,
                "in": in_f,
                "params": out_f * in_f,
                "singular_values": s,
                "energy": energy_curve(s),
                **rank_statistics(s),
                "metric": metric,
            }
        )
    report(progress, len(linears), len(linears), "spectra done")
    frame = pd.DataFrame(rows)
    if memo:
        _CACHE[model] = (key, frame)
    return frame.copy()
