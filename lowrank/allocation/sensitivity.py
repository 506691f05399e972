"""Measured sensitivity: the calibration loss with one layer at a time replaced by its rank-r factorization.

For every compressible layer ``W`` (out, in) alone and every kept fraction ``f``, ``W`` is
replaced by its rank-``r`` factorization, ``r = floor(f * out * in / (out + in))``, by plain SVD truncation or
by a registered method on the layer's statistics (``method``, ``stats``: e.g. kfac_svd, LEMS-like)
(fractions at/above break-even are skipped), and the mean loss of a few shuffled batches of
the task's train split is measured. Between measured ranks the loss increase over the dense
model is linear in rank, 0 at full rank ``min(out, in)``; below the smallest measured rank
it is not guessed (NaN).

Cost: one SVD per layer and ``layers x fractions + 1`` loss evaluations of the calibration batches. A model with a
block layout (:func:`lowrank.models.architectures.block_layout`: causal LMs and encoder classifiers of the supported
families) runs each evaluation from the layer's block on: the dense inputs of block ``i``, ``h_i``, are kept for one
block at a time (``h_{i+1} = block_i(h_i)`` once the block's layers are measured), and a layer of block ``i`` costs
blocks ``i..L-1`` and the head instead of the whole model, about half of the blocks on average. The loss is the
model's own on the same batches, equal to a full forward up to float rounding. Other models, and layers outside the
blocks, run the whole forward.
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
from lowrank.models.architectures import block_layout, compressible_linears
from lowrank.models.labels import check_labels
from lowrank.models.streamed import Blocks
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
    was_training = model.training
    model.eval()
    losses_from = _SuffixLosses(loaded, calibration, sizes)
    ranks, losses, shapes = {}, {}, {}
    try:
        baseline = losses_from.whole()
        for step, (name, layer) in enumerate(linears.items()):
            report(progress, step, len(linears), f"sensitivity of {name}")
            mean_loss = losses_from.layer(name)
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


class _SuffixLosses:
    """The mean calibration loss with the model's current weights, run from the block of the layer being measured.

    Layers must be asked for in the model's order (block by block): :meth:`layer` advances the kept dense block
    inputs ``h_i`` (batch, T, d) past the blocks before the layer's, with the weights those blocks have then (dense:
    the measurement restores every layer it changes). Without a block layout, or for a layer outside the blocks,
    the loss is the whole forward's.
    """

    def __init__(self, loaded, calibration: list[dict], sizes: list[int]):
        self.model, self.calibration, self.sizes = loaded.model, calibration, sizes
        layout = block_layout(loaded.kind, self.model.config)
        self.blocks = None if layout is None else Blocks(self.model, layout, loaded.device)
        self.index = 0  # the block whose inputs self.hidden holds
        self.hidden = self.contexts = None
        if self.blocks is not None:
            with torch.no_grad():
                self.hidden = [self.blocks.embed(b["input_ids"]) for b in calibration]
                self.contexts = [
                    self.blocks.context(h, b.get("attention_mask")) for h, b in zip(self.hidden, calibration)
                ]

    def _mean(self, losses) -> float:
        return sum(float(loss) * n for loss, n in zip(losses, self.sizes)) / sum(self.sizes)

    def whole(self) -> float:
        """The loss of the whole forward on every batch."""
        with torch.no_grad():
            return self._mean(self.model(**b).loss for b in self.calibration)

    def _block_of(self, name: str) -> int | None:
        prefixes = (self.blocks.layout.block_name(i) + "." for i in range(self.blocks.num_blocks))
        return next((i for i, prefix in enumerate(prefixes) if name.startswith(prefix)), None)

    def layer(self, name: str):
        """A callable giving the loss with ``name``'s current weight: blocks ``i..L-1`` and the head from the kept
        ``h_i`` for a layer of block ``i``, else the whole forward."""
        index = None if self.blocks is None else self._block_of(name)
        if index is None:
            return self.whole
        if index < self.index:
            raise ValueError(f"layers are measured in block order; {name} comes after block {self.index}")
        with torch.no_grad():
            for i in range(self.index, index):
                self.hidden = [self.blocks.run_block(i, h, c) for h, c in zip(self.hidden, self.contexts)]
        self.index = index

        def loss() -> float:
            with torch.no_grad():
                return self._mean(
                    self._from(index, h, c, b) for h, c, b in zip(self.hidden, self.contexts, self.calibration)
                )

        return loss

    def _from(self, index: int, hidden: torch.Tensor, context, batch: dict) -> torch.Tensor:
        for i in range(index, self.blocks.num_blocks):
            hidden = self.blocks.run_block(i, hidden, context)
        return self.blocks.loss(hidden, batch["labels"])
