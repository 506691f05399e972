"""Measured sensitivity: the calibration loss with one layer at a time replaced by its rank-r factorization.

For every compressible layer ``W`` (out, in) alone and every kept fraction ``f``, ``W`` is
replaced by its rank-``r`` factorization, ``r = floor(f * out * in / (out + in))``, by plain SVD truncation or
by a registered method on the layer's statistics (``method``, ``stats``: e.g. kfac_svd, LEMS-like)
(fractions at/above break-even are skipped), and the mean loss of a few shuffled batches of
the task's train split is measured. Between measured ranks the loss increase over the dense
model is linear in rank, 0 at full rank ``min(out, in)``; below the smallest measured rank
it is not guessed (NaN).

Cost: one SVD per layer and ``layers x fractions + 1`` passes over the calibration batches.
The table is cached with the project's statistics cache (:mod:`lowrank.statistics.cache`,
kind ``sensitivity``): keyed by the weights fingerprint, the task and the settings (with a method other than
``svd``, its name and a digest of the statistics it was given).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowrank.data.batches import batches
from lowrank.methods import factorize, get_method
from lowrank.models.architectures import compressible_linears
from lowrank.models.labels import check_labels
from lowrank.progress import Progress, report
from lowrank.ranks import fraction_rank
from lowrank.statistics import cache

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)


@dataclass
class Sensitivity:
    """Calibration loss with one layer at a time replaced by its rank-r SVD truncation.

    ``ranks[name]`` / ``losses[name]``: measured ranks and mean losses; ``baseline_loss``:
    the dense model's loss on the same batches.
    """

    baseline_loss: float
    fractions: tuple[float, ...]
    ranks: dict[str, list[int]]
    losses: dict[str, list[float]]
    shapes: dict[str, tuple[int, int]]
    examples: int

    def increase_at(self, name: str, ranks: list[int]) -> np.ndarray:
        """Loss increase over the dense model at ``ranks``: linear in rank between measured points
        and 0 at full rank; NaN below the smallest measured rank (not measured, not guessed)."""
        xs = np.array(self.ranks[name] + [min(self.shapes[name])], dtype=float)
        ys = np.array([loss - self.baseline_loss for loss in self.losses[name]] + [0.0])
        wanted = np.asarray(ranks, dtype=float)
        return np.where(wanted < xs[0], np.nan, np.interp(wanted, xs, ys))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The table as tensors for the cache (float64 losses: read back exactly)."""
        tensors = {
            "baseline_loss": torch.tensor(self.baseline_loss, dtype=torch.float64),
            "fractions": torch.tensor(self.fractions, dtype=torch.float64),
            "examples": torch.tensor(self.examples, dtype=torch.int64),
        }
        for name in self.ranks:
            tensors[f"ranks/{name}"] = torch.tensor(self.ranks[name], dtype=torch.int64)
            tensors[f"losses/{name}"] = torch.tensor(self.losses[name], dtype=torch.float64)
            tensors[f"shape/{name}"] = torch.tensor(self.shapes[name], dtype=torch.int64)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], names: list[str]) -> Sensitivity:
        """The table of :meth:`to_tensors`, its layers in the order of ``names``."""
        return cls(
            float(tensors["baseline_loss"]),
            tuple(tensors["fractions"].tolist()),
            {n: tensors[f"ranks/{n}"].tolist() for n in names},
            {n: tensors[f"losses/{n}"].tolist() for n in names},
            {n: tuple(tensors[f"shape/{n}"].tolist()) for n in names},
            int(tensors["examples"]),
        )


def sensitivity_settings(
    fractions=DEFAULT_FRACTIONS,
    num_batches: int = 4,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    method: str = "svd",
    stats: dict | None = None,
) -> dict:
    """The checked settings of a measurement (fractions sorted), which are also its cache key (a method other
    than ``svd`` adds its name and the digest of ``stats``; ``ValueError`` when its statistics are missing)."""
    fractions = tuple(sorted(float(f) for f in fractions))
    if not fractions or not all(0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"sensitivity fractions must be in (0, 1), got {fractions}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError("num_batches and batch_size must be positive")
    settings = {
        "fractions": list(fractions),
        "num_batches": num_batches,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
        "split": "train",
    }
    if method != "svd":
        spec = get_method(method)
        if spec.needs and not stats:
            raise ValueError(f"measuring sensitivity with {method!r} needs its statistics ({', '.join(spec.needs)})")
        settings |= {"method": method, "statistics": _digest(stats or {})}
    return settings


def _digest(stats: dict) -> str:
    """SHA-256 of per-layer statistics (names, keys, shapes and values)."""
    h = hashlib.sha256()
    for name in sorted(stats):
        for key in sorted(stats[name]):
            tensor = stats[name][key].detach().float().contiguous().cpu()
            h.update(f"{name}::{key}:{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def sensitivity_cache_path(loaded, task, settings: dict) -> Path:
    """Cache entry of the measurement of ``loaded`` on ``task`` (a loaded task) with ``settings``
    (:func:`sensitivity_settings`)."""
    return cache.entry_path("sensitivity", loaded, task, settings)


def _truncation(W: torch.Tensor, method: str, stats: dict | None):
    """``r -> `` the rank-``r`` approximation of ``W`` by ``method`` (plain SVD: one decomposition for every r)."""
    if method == "svd":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return lambda r: (U[:, :r] * S[:r]) @ Vh[:r]
    return lambda r: factorize(W, r, method, stats=stats).matrix()


def measure_sensitivity(
    loaded,
    task,
    fractions=DEFAULT_FRACTIONS,
    num_batches: int = 4,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    use_cache: bool = True,
    progress: Progress | None = None,
    method: str = "svd",
    stats: dict | None = None,
) -> Sensitivity:
    """Measure, for every compressible layer alone and every kept ``fraction``, the mean loss of
    ``num_batches`` shuffled batches of the task's train split with that layer replaced by its
    rank-``r`` factorization (``floor(f * out * in / (out + in))``, skipped at/above break-even): plain SVD
    truncation, or ``method`` on the layer's ``stats`` (``{layer: {key: tensor}}``).

    Cached under ``<cache>/sensitivity/`` (:func:`sensitivity_cache_path`). The model's weights
    are restored exactly afterwards (also on error).
    """
    if task is None:
        raise ValueError(
            "strategy 'sensitivity' needs a task for its calibration batches (e.g. task='rotten_tomatoes')"
        )
    settings = sensitivity_settings(fractions, num_batches, batch_size, max_length, seed, method, stats)
    fractions = tuple(settings["fractions"])
    task = check_labels(loaded, task)
    if loaded.kind not in ("classifier", "causal-lm"):
        raise ValueError(f"{loaded.name} is a {loaded.kind}: sensitivity needs a loss (a classifier or a causal LM)")
    model, device = loaded.model, loaded.device
    linears = compressible_linears(model)
    path = sensitivity_cache_path(loaded, task, settings)
    if use_cache and (cached := cache.read(path)) is not None:
        return Sensitivity.from_tensors(cached, list(linears))
    calibration = [
        {k: v.to(device) for k, v in b.items()}
        for b in batches(
            task, loaded.tokenizer, "train", batch_size, max_length, shuffle=True, seed=seed, limit=num_batches
        )
    ]
    sizes = [int(b["input_ids"].shape[0]) for b in calibration]

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(model(**b).loss) * n for b, n in zip(calibration, sizes)) / sum(sizes)

    was_training = model.training
    model.eval()
    ranks, losses, shapes = {}, {}, {}
    try:
        baseline = mean_loss()
        for step, (name, layer) in enumerate(linears.items()):
            report(progress, step, len(linears), f"sensitivity of {name}")
            out_f, in_f = layer.weight.shape
            shapes[name] = (out_f, in_f)
            wanted = sorted({r for r in (fraction_rank(out_f, in_f, f, align=1) for f in fractions) if r is not None})
            original = layer.weight.detach().clone()
            truncate = _truncation(original.float(), method, (stats or {}).get(name))
            ranks[name], losses[name] = wanted, []
            try:
                for r in wanted:
                    with torch.no_grad():
                        layer.weight.copy_(truncate(r).to(original.dtype))
                    losses[name].append(mean_loss())
            finally:
                with torch.no_grad():
                    layer.weight.copy_(original)
    finally:
        model.train(was_training)
    report(progress, len(linears), len(linears), "sensitivity done")
    missing = [n for n, r in ranks.items() if not r]
    if missing:
        raise ValueError(
            f"no sensitivity fraction gives a rank below break-even for {missing[:3]}; use smaller fractions"
        )
    table = Sensitivity(baseline, fractions, ranks, losses, shapes, sum(sizes))
    if use_cache:
        cache.write(path, table.to_tensors(), settings)
    return table
