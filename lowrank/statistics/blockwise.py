"""Statistics computed one block at a time (a causal LM's decoder blocks, a classifier's encoder blocks), for
layer-sequential and error-compensated compression.

Both sweeps run over a :class:`~lowrank.models.streamed.StreamedModel` (or the in-memory
:class:`~lowrank.models.streamed.Blocks`) and yield each block while it is loaded, with its layers' statistics as
:func:`lowrank.statistics.statistics_for` gives them (same collectors, same sample), so the block can be
factorized before the next one loads. :func:`forward_sweep` (``activations``): block ``i``'s inputs are the
outputs of blocks ``0..i-1``, compressed (``inputs="compressed"``) or dense; one block forward per block, two
with compressed inputs. With ``inputs="compensated"`` (``compensation``) both streams are kept: each batch runs
the dense block on the dense hidden states (each Linear keeps its ``x``) and on the compressed model's
(``x_hat x_hat^T``, ``x x_hat^T`` accumulated); after factorization the dense stream moves on by the dense
block's outputs, the compressed one by the compressed block's; three block forwards per block, two streams. :func:`gradient_sweep` (``fisher``, ``gradients``): a
streaming forward/backward pass of the dense model with each block's input ``h_i`` on disk, equal to the
in-memory pass up to summation order; two forwards and one backward per block, disk ``blocks x tokens x hidden
x 4`` bytes. :func:`block_sweep` picks the sweep; a method that needs dense-model statistics besides the
compensation ones (``kfac_svd_compensated``: ``gradients``) gets them from one dense sweep first, kept on disk one
file per block (or given, e.g. from the cached :func:`lowrank.statistics_for`), joined to each block of the
compensated sweep. Single process, not cached.
Details: docs/methods.md#scale-layer-sequential-compression-and-data-parallel-statistics.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lowrank.models.streamed import Blocks
from lowrank.statistics.kinds import STATISTIC_KINDS, swept_kinds
from lowrank.statistics.moments import SharedInputs, begin_batch
from lowrank.statistics.passes import calibration_batches
from lowrank.statistics.resolve import passes, restrict
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

INPUTS = ("compressed", "dense", "compensated")


@dataclass
class BlockStep:
    """Block ``index`` while it is loaded: the module (compress it in place) and its layers' statistics."""

    index: int
    block: nn.Module
    stats: dict[str, dict[str, torch.Tensor]]


def unsupported(needs: Sequence[str]) -> list[str]:
    """The kinds of ``needs`` a sweep cannot compute: those read off a whole model rather than collected."""
    return [kind for kind in needs if STATISTIC_KINDS[kind].collector is None]


def needs_gradients(needs: Sequence[str]) -> bool:
    """True when a kind of ``needs`` back-propagates (the sweep is then :func:`gradient_sweep`)."""
    return any(STATISTIC_KINDS[kind].backward for kind in needs)


class BlockStatistics:
    """The collectors of ``statistics_for`` on one block's Linears: one per collector of ``needs`` and layer."""

    def __init__(self, linears: dict[str, nn.Linear], needs: Sequence[str], settings: StatisticsSettings = DEFAULT):
        self.needs = tuple(needs)
        self.hooks = {
            (collector, name): collector.make(module, any(k.backward for k in kinds), settings)
            for collector, kinds in passes(needs).items()
            for name, module in linears.items()
        }
        self.shared = SharedInputs()

    def batch(self, size: int, mask: torch.Tensor | None) -> None:
        begin_batch(self.hooks.values(), size, mask, self.shared)

    def phase(self, phase: str) -> None:
        """``"dense"`` or ``"compressed"``: which stream the next forward runs (for the cross-moment hooks)."""
        self.shared.clear()
        for c in self.hooks.values():
            c.phase = phase

    def result(self, examples: int) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        for (_, name), c in self.hooks.items():
            out.setdefault(name, {}).update(c.result(examples))
        return restrict(out, self.needs)

    def remove(self) -> None:
        self.shared.clear()
        for c in self.hooks.values():
            c.remove()


def sample(task, tokenizer, settings) -> list[dict]:
    """The calibration batches (the sample of :func:`lowrank.statistics.passes.calibration_pass`), as a list."""
    return list(calibration_batches(task, tokenizer, settings)[1])


def _mask(batch: dict) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def _block_linears(stream: Blocks, index: int, names: Sequence[str]) -> dict[str, nn.Linear]:
    prefix = stream.layout.block_name(index) + "."
    block = stream.block(index)
    return {name: block.get_submodule(name[len(prefix) :]) for name in names if name.startswith(prefix)}


def forward_sweep(
    stream: Blocks,
    batches: list[dict],
    layers: Sequence[str],
    needs: Sequence[str],
    inputs: str = "compressed",
    settings: StatisticsSettings = DEFAULT,
) -> Iterator[BlockStep]:
    """Yield each block with its statistics (see the module docstring); ``layers``: full names of the
    Linears to collect for. Without ``needs`` nothing is run (the blocks are only loaded). ``"compensated"``
    inputs take exactly the sweep-only kinds; the other inputs none of them."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    swept = swept_kinds(needs)
    compensated = inputs == "compensated"
    if (compensated and len(swept) != len(needs)) or (swept and not compensated):
        raise ValueError(
            f"compensated inputs compute exactly the {', '.join(swept_kinds(STATISTIC_KINDS))} statistics, not {needs}"
        )
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    run = bool(needs) and bool(batches)
    with torch.no_grad():
        hidden = [stream.embed(b["input_ids"]) for b in batches] if run else []
        contexts = [stream.context(h, b.get("attention_mask")) for h, b in zip(hidden, batches)]
    dense = list(hidden) if compensated else []
    for index in range(stream.num_blocks):
        stream.load_block(index)
        stats: dict = {}
        outputs = []
        if run:
            collectors = BlockStatistics(_block_linears(stream, index, layers), needs, settings)
            try:
                with torch.no_grad():
                    for k, (h, ctx, b) in enumerate(zip(hidden, contexts, batches)):
                        collectors.batch(b["input_ids"].shape[0], _mask(b))
                        if compensated:
                            collectors.phase("dense")
                            dense[k] = stream.run_block(index, dense[k], ctx)
                            collectors.phase("compressed")
                        out = stream.run_block(index, h, ctx)
                        if inputs == "dense":
                            outputs.append(out)
            finally:
                collectors.remove()
            stats = collectors.result(examples)
        yield BlockStep(index, stream.block(index), stats)
        if run and inputs != "dense":
            with torch.no_grad():
                outputs = [stream.run_block(index, h, ctx) for h, ctx in zip(hidden, contexts)]
        hidden = outputs
        stream.release_block(index)


def _save_boundary(folder: Path, index: int, hidden: list[torch.Tensor]) -> None:
    save_file(
        {str(k): h.detach().contiguous().cpu() for k, h in enumerate(hidden)},
        str(folder / f"input-{index}.safetensors"),
    )


def _read_boundary(folder: Path, index: int, count: int, device: torch.device) -> list[torch.Tensor]:
    with safe_open(str(folder / f"input-{index}.safetensors"), framework="pt") as handle:
        return [handle.get_tensor(str(k)).to(device) for k in range(count)]


def gradient_sweep(
    stream: Blocks,
    batches: list[dict],
    layers: Sequence[str],
    needs: Sequence[str],
    workdir: Path,
    settings: StatisticsSettings = DEFAULT,
) -> Iterator[BlockStep]:
    """Yield each block, last to first, with dense-model statistics including gradients (see the module
    docstring). Block inputs are kept in ``workdir`` (removed at the end); batches need ``labels``."""
    if not batches:
        raise ValueError("the gradient sweep needs at least one calibration batch")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    try:
        with torch.no_grad():
            hidden = [stream.embed(b["input_ids"]) for b in batches]
            contexts = [stream.context(h, b.get("attention_mask")) for h, b in zip(hidden, batches)]
            for index in range(stream.num_blocks):
                _save_boundary(workdir, index, hidden)
                stream.load_block(index)
                hidden = [stream.run_block(index, h, ctx) for h, ctx in zip(hidden, contexts)]
                stream.release_block(index)
        grads = []
        for h, b in zip(hidden, batches):
            x = h.detach().requires_grad_(True)
            grads.append(torch.autograd.grad(stream.loss(x, b["labels"]), x)[0])
        del hidden
        for index in reversed(range(stream.num_blocks)):
            inputs = _read_boundary(workdir, index, len(batches), stream.device)
            stream.load_block(index)
            collectors = BlockStatistics(_block_linears(stream, index, layers), needs, settings)
            below = []
            try:
                for x, g, ctx, b in zip(inputs, grads, contexts, batches):
                    collectors.batch(b["input_ids"].shape[0], _mask(b))
                    x = x.detach().requires_grad_(True)
                    below.append(torch.autograd.grad(stream.run_block(index, x, ctx), x, grad_outputs=g)[0])
            finally:
                collectors.remove()
            del inputs
            grads = below
            yield BlockStep(index, stream.block(index), collectors.result(examples))
            stream.release_block(index)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def block_sweep(
    stream: Blocks,
    batches: list[dict],
    layers: Sequence[str],
    needs: Sequence[str],
    inputs: str,
    workdir: Path,
    settings: StatisticsSettings = DEFAULT,
    dense: dict | None = None,
) -> Iterator[BlockStep]:
    """The sweep ``needs`` and ``inputs`` take, yielding each block with all its statistics: compensated inputs
    (:func:`compensated_sweep`), else the gradient sweep when a kind back-propagates, else the forward sweep.
    ``workdir``: room on disk for the gradient sweep's block inputs and the dense statistics (removed after)."""
    if inputs == "compensated":
        return compensated_sweep(stream, batches, layers, needs, workdir, settings, dense)
    if needs_gradients(needs):
        return gradient_sweep(stream, batches, layers, needs, workdir, settings)
    return forward_sweep(stream, batches, layers, needs, inputs, settings)


def compensated_sweep(
    stream: Blocks,
    batches: list[dict],
    layers: Sequence[str],
    needs: Sequence[str],
    workdir: Path,
    settings: StatisticsSettings = DEFAULT,
    dense: dict | None = None,
) -> Iterator[BlockStep]:
    """:func:`forward_sweep` with compensated inputs for the sweep-only kinds of ``needs``, each block's statistics
    joined with the dense model's statistics of the other kinds (e.g. ``gradients``): ``dense`` when given
    (``{layer: {key: tensor}}``), else computed by one dense sweep first (a gradient sweep when they back-propagate)
    and kept in ``workdir``, one safetensors file per block (``workdir`` is removed at the end). Extra cost: that
    sweep, and disk for one block's statistics per block."""
    others = [kind for kind in needs if kind not in swept_kinds(needs)]
    swept = swept_kinds(needs)
    folder = Path(workdir) / "statistics"
    try:
        if others and dense is None:
            folder.mkdir(parents=True, exist_ok=True)
            first = block_sweep(stream, batches, layers, others, "dense", Path(workdir) / "boundaries", settings)
            for step in first:
                flat = {f"{n}::{k}": t.contiguous() for n, tensors in step.stats.items() for k, t in tensors.items()}
                save_file(flat, str(folder / f"block-{step.index}.safetensors"))
        dense = restrict(dense, others) if dense is not None else None
        for step in forward_sweep(stream, batches, layers, swept, "compensated", settings):
            extra = dense if dense is not None else _read_statistics(folder, step.index) if others else {}
            prefix = stream.layout.block_name(step.index) + "."
            for name, tensors in extra.items():
                if name.startswith(prefix):
                    step.stats.setdefault(name, {}).update(tensors)
            yield step
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_statistics(folder: Path, index: int) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(folder / f"block-{index}.safetensors")).items():
        name, _, kind = key.rpartition("::")
        out.setdefault(name, {})[kind] = tensor
    return out
