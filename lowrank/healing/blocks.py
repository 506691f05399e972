"""Block-level healing of a compressed model (a causal LM, or a classifier through its encoder layout): each block's
factors fitted to the dense block's outputs.

For block ``i`` with dense function ``f_i`` and compressed function ``g_i`` (its ``LowRankLinear`` factors ``U``,
``V`` and, with ``norms``, its norm weights ``theta``)::

    min_theta  mean_{t in the real (non-padding) calibration tokens} || f_i(h_i)_t - g_i(h_hat_i; theta)_t ||^2 / d

``h_i``: block ``i``'s inputs in the dense model (the dense stream, ``h_{i+1} = f_i(h_i)``); ``h_hat_i``: its inputs
in the compressed model, through the blocks already healed (``h_hat_{i+1} = g_i(h_hat_i)``), so each block learns
to undo the error of the blocks before it as well as its own; ``h_0 = h_hat_0`` the embeddings. AdamW,
``block_steps`` steps of one training batch each (its forward at the config's ``precision``,
:mod:`lowrank.healing.precision`; targets, held-out errors and streams in float32), drawn from the first
``block_steps`` training batches (the most one block's training uses: only those are run through the blocks). The
relative error ``sum ||f - g||^2 / sum ||f||^2`` on the held-out batches is measured before and after; a block that
did not improve gets its factors back. Both models run through :class:`~lowrank.models.streamed.Blocks` (in
memory) or :class:`~lowrank.models.streamed.StreamedModel` (one block loaded at a time: sequential mode), the same
code either way. At the end the held-out KL divergence of the output distribution (:mod:`lowrank.healing.loss`) is
read off the last hidden states, for the unhealed model (a third held-out stream through the blocks before training)
and the healed one. Cost per block: ``block_steps`` forward and backward passes of one block on one batch, two
block forwards per fitted batch (none past the deadline) and five per held-out batch; memory: two streams of the
fitted batches, ``tokens x hidden x 4`` bytes each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lowrank.healing.config import HealConfig
from lowrank.healing.loss import kl_sum
from lowrank.healing.params import optimizer, restore, snapshot, train_only, trainable
from lowrank.healing.precision import training_precision
from lowrank.models.streamed import Blocks
from lowrank.progress import Progress, report


@dataclass
class BlockRecord:
    """What block-level healing did: per block, the held-out relative output error before and after, the steps
    taken and whether the trained factors were kept; the held-out KL of the whole model before and after."""

    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    heldout_before: float | None = None
    heldout_after: float | None = None

    def to_dict(self) -> dict:
        return {
            "block_error_before": self.error_before,
            "block_error_after": self.error_after,
            "block_steps": self.steps,
            "block_kept": self.kept,
            "heldout_before": self.heldout_before,
            "heldout_after": self.heldout_after,
        }


class _Stream:
    """Hidden states of a list of batches, with the block context (positions, rotary, masks) of each and the mask of
    its real (non-padding) tokens."""

    def __init__(self, blocks: Blocks, batches: list[dict]):
        with torch.no_grad():
            self.hidden = [blocks.embed(b["input_ids"]) for b in batches]
            self.contexts = [blocks.context(h, b.get("attention_mask")) for h, b in zip(self.hidden, batches)]
        self.masks = [
            None if b.get("attention_mask") is None else b["attention_mask"].to(blocks.device).bool() for b in batches
        ]

    def run(self, blocks: Blocks, index: int, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        with torch.no_grad():
            return [blocks.run_block(index, h, c) for h, c in zip(hidden or self.hidden, self.contexts)]


def _real(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``hidden`` (batch, T, d) at the real tokens of ``mask`` (batch, T): (tokens, d)."""
    return hidden.flatten(0, 1) if mask is None else hidden[mask]


def _relative_error(blocks: Blocks, index: int, stream: _Stream, targets: list[torch.Tensor]) -> float:
    outputs = stream.run(blocks, index)
    num = sum(float((_real(o, m) - _real(t, m)).pow(2).sum()) for o, t, m in zip(outputs, targets, stream.masks))
    den = sum(float(_real(t, m).pow(2).sum()) for t, m in zip(targets, stream.masks))
    return num / max(den, 1e-30)


def _train_block(
    blocks: Blocks, index: int, stream: _Stream, targets: list[torch.Tensor], config: HealConfig, deadline: float
) -> int:
    """``config.block_steps`` AdamW steps on the block's trainable parameters (fewer past ``deadline`` or when the
    loss stops being finite); returns the steps taken."""
    params = trainable(blocks.block(index), config.norms)
    train_only(blocks.block(index), params)
    opt = optimizer(params, config.block_lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed + index)
    order: list[int] = []
    steps = 0
    with torch.enable_grad():
        while steps < config.block_steps and time.monotonic() < deadline:
            if not order:
                order = torch.randperm(len(targets), generator=generator).tolist()
            k = order.pop()
            with training_precision(config.precision, blocks.device):
                output = blocks.run_block(index, stream.hidden[k], stream.contexts[k])
            loss = F.mse_loss(_real(output, stream.masks[k]).float(), _real(targets[k], stream.masks[k]))
            if not torch.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    blocks.block(index).requires_grad_(False)
    return steps


def _heldout_kl(
    compressed: Blocks, dense: Blocks, hidden: list[torch.Tensor], targets: list[torch.Tensor], temperature: float
) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for h, t in zip(hidden, targets):
            part, n = kl_sum(dense.logits(t), compressed.logits(h), temperature=temperature)
            total, count = total + float(part), count + n
    return total / max(1, count)


def heal_blocks(
    compressed: Blocks,
    dense: Blocks,
    train: list[dict],
    heldout: list[dict],
    config: HealConfig,
    record: BlockRecord,
    deadline: float = float("inf"),
    progress: Progress | None = None,
) -> Iterator[int]:
    """Heal ``compressed`` block by block toward ``dense`` (see the module docstring), filling ``record``; yields each
    block's index while both blocks are loaded and the compressed one is healed (write it then). Past ``deadline``
    (``time.monotonic()``) the remaining blocks are passed through untrained, with the held-out batches only."""
    fitted = train[: config.block_steps]  # one batch per step: the most one block's training draws
    fit, fit_dense = _Stream(compressed, fitted), _Stream(dense, fitted)
    held, held_dense = _Stream(compressed, heldout), _Stream(dense, heldout)
    unhealed = list(held.hidden)
    for index in range(compressed.num_blocks):
        report(progress, index, compressed.num_blocks, f"healing block {index}")
        dense.load_block(index)
        compressed.load_block(index)
        training = fit is not None and time.monotonic() < deadline
        if not training:  # past the deadline the training batches are not run through the remaining blocks
            fit = fit_dense = None
        targets = fit_dense.run(dense, index) if training else []
        held_targets = held_dense.run(dense, index)
        unhealed = held.run(compressed, index, unhealed)
        params = trainable(compressed.block(index), config.norms)
        before = _relative_error(compressed, index, held, held_targets)
        saved = snapshot(params)
        steps = _train_block(compressed, index, fit, targets, config, deadline) if params and training else 0
        after = _relative_error(compressed, index, held, held_targets) if steps else before
        kept = after < before
        if not kept:
            restore(params, saved)
            after = before
        record.error_before.append(before)
        record.error_after.append(after)
        record.steps.append(steps)
        record.kept.append(kept)
        yield index
        held.hidden, held_dense.hidden = held.run(compressed, index), held_targets
        if training:
            fit.hidden, fit_dense.hidden = fit.run(compressed, index), targets
        dense.release_block(index)
        compressed.release_block(index)
    record.heldout_before = _heldout_kl(compressed, dense, unhealed, held_dense.hidden, config.temperature)
    record.heldout_after = _heldout_kl(compressed, dense, held.hidden, held_dense.hidden, config.temperature)
    report(progress, compressed.num_blocks, compressed.num_blocks, "block healing done")
