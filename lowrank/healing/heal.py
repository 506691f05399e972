"""Healing a compressed model with the calibration text only: :func:`heal` in memory, :func:`heal_sequential` one
decoder block at a time.

The level (:class:`~lowrank.healing.config.HealConfig`) picks block-level fitting (:mod:`lowrank.healing.blocks`),
end-to-end distillation (:mod:`lowrank.healing.distill`) or both, in that order, within one time budget. The data
is the task's training split (:mod:`lowrank.healing.data`); the held-out KL of the whole model
(:mod:`lowrank.healing.loss`) is measured before and after, and a healed model whose held-out KL rose is given its
unhealed factors back. The dense model is only read. The result is a compressed model like any other: its
:class:`~lowrank.info.CompressionInfo` gains ``healing`` (level, settings, task, tokens, steps, seconds, held-out
KL before and after, and each level's record); :func:`lowrank.save_compressed` writes it.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

from lowrank.compress import set_module
from lowrank.data.tasks import load_task
from lowrank.evaluation.quality import check_task_fits
from lowrank.files.atomic import atomic_dir
from lowrank.healing.blocks import BlockRecord, heal_blocks
from lowrank.healing.config import DEFAULT_HEALING, SPLIT, HealConfig, default_healing
from lowrank.healing.data import heal_batches, tokens_in
from lowrank.healing.distill import distill, heldout_kl
from lowrank.healing.params import check_factorized, restore, snapshot, trainable
from lowrank.info import INFO_FILE, load_info, save_info
from lowrank.layers import LowRankLinear
from lowrank.loaded import LoadedModel
from lowrank.models.architectures import block_layout
from lowrank.models.loading import prepare_tokenizer
from lowrank.models.pretrained import from_pretrained
from lowrank.models.shards import ShardWriter
from lowrank.models.streamed import Blocks, StreamedModel, open_checkpoint
from lowrank.progress import Progress, report, scaled
from lowrank.sequential import block_models, source_folder

KINDS = tuple(DEFAULT_HEALING)  # what has an output distribution to distil, and a recipe


def recipe_for(compressed: LoadedModel) -> HealConfig:
    """The default healing recipe of ``compressed``: its kind's, at end to end where it has no block layout."""
    return default_healing(compressed.kind, block_layout(compressed.kind, compressed.model.config) is not None)


def _check_kind(compressed: LoadedModel) -> None:
    if compressed.kind not in KINDS:
        raise ValueError(
            f"healing distils a causal LM or a classifier toward its dense model; {compressed.name} is a {compressed.kind}"
        )


def _check_pair(compressed: LoadedModel, dense: LoadedModel, config: HealConfig) -> None:
    """One-line ``ValueError`` for a pair healing cannot take, before any work."""
    if getattr(compressed.model, "lowrank_info", None) is None:
        raise ValueError(f"{compressed.name} is not a compressed model (no lowrank_info): compress it first")
    check_factorized(compressed.model)
    if dense.kind != compressed.kind:
        raise ValueError(f"the dense model {dense.name} is a {dense.kind}, the compressed one a {compressed.kind}")
    if getattr(dense.model, "lowrank_info", None) is not None:
        raise ValueError(f"{dense.name} is itself compressed: heal toward the dense model it came from")
    size = "vocab_size" if compressed.kind == "causal-lm" else "num_labels"
    ours, theirs = getattr(compressed.model.config, size, None), getattr(dense.model.config, size, None)
    if ours != theirs:
        raise ValueError(f"the compressed model has {size} {ours}, the dense model {dense.name} {theirs}")
    if compressed.device != dense.device:
        raise ValueError(f"the models are on different devices ({compressed.device} and {dense.device})")
    if config.blocks and block_layout(compressed.kind, compressed.model.config) is None:
        raise ValueError(
            f"block-level healing runs {block_models()} one block at a time; heal {compressed.name} with "
            "level='end-to-end'"
        )


def _recipe(config: HealConfig, task, dense_name: str, train: list, heldout: list, before: float) -> dict:
    """The part of the healing record known before training: settings, data and the unhealed held-out KL."""
    return {
        "level": config.level,
        "config": config.to_dict(),
        "task": task.name,
        "split": SPLIT,
        "dense_model": dense_name,
        "train_tokens": sum(tokens_in(b) for b in train),
        "heldout_tokens": sum(tokens_in(b) for b in heldout),
        "heldout_before": before,
    }


def _shares(config: HealConfig) -> tuple[float, float]:
    """The share of the progress bar block-level healing takes, and where end to end starts."""
    if config.level == "both":
        return 0.5, 0.5
    return (1.0, 0.0) if config.blocks else (0.0, 0.0)


def heal(
    compressed: LoadedModel,
    dense: LoadedModel,
    task,
    config: HealConfig | None = None,
    progress: Progress | None = None,
) -> LoadedModel:
    """A healed copy of ``compressed`` (``compressed`` and ``dense`` untouched), trained toward ``dense`` on ``task``'s
    training split as ``config`` says (``None``: the recipe of its kind, :func:`~lowrank.healing.default_healing`;
    see the module docstring); returns a :class:`LoadedModel` whose ``lowrank_info.healing`` records the recipe.
    Both models on one device (``cuda`` works as ``cpu``)."""
    _check_kind(compressed)
    config = config or recipe_for(compressed)
    _check_pair(compressed, dense, config)
    task = load_task(task)
    check_task_fits(compressed.name, compressed.kind, task.kind, task.name)
    with _eval_mode(dense.model):  # no dropout in the targets; the dense model's mode is given back
        return _heal(compressed, dense, task, config, progress)


@contextmanager
def _eval_mode(module):
    training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(training)


def _heal(compressed: LoadedModel, dense: LoadedModel, task, config: HealConfig, progress) -> LoadedModel:
    start = time.monotonic()  # the budget covers the whole call: copy, data, training and held-out checks
    deadline = start + config.time_budget_s
    device, kind = compressed.device, compressed.kind
    new = copy.deepcopy(compressed.model).eval()  # no dropout: the deployed function is what is fitted
    train, heldout = heal_batches(task, compressed.tokenizer, config)
    params = trainable(new, config.norms)
    unhealed = snapshot(params)
    before = heldout_kl(new, dense.model, heldout, kind, device, config.temperature)
    record = _recipe(config, task, dense.name, train, heldout, before)
    current, (block_share, e2e_start) = before, _shares(config)
    if config.blocks:
        layout = block_layout(kind, new.config)
        blocks = BlockRecord()
        for _ in heal_blocks(
            Blocks(new, layout, device),
            Blocks(dense.model, layout, device),
            train,
            heldout,
            config,
            blocks,
            deadline,
            scaled(progress, 0.0, block_share),
        ):
            pass
        record["blocks"] = blocks.to_dict()
        current = heldout_kl(new, dense.model, heldout, kind, device, config.temperature)
    if config.end_to_end:
        e2e = distill(
            new, dense.model, kind, train, heldout, config, deadline, scaled(progress, e2e_start, 1.0), current
        )
        record["end_to_end"] = e2e
        current = e2e["heldout_after"]
    record["kept"] = "healed" if current <= before else "unhealed"
    if current > before:
        restore(params, unhealed)
        current = before
    record |= {"heldout_after": current, "seconds": time.monotonic() - start}
    new.lowrank_info = replace(new.lowrank_info, healing=record)
    report(progress, 1, 1, f"healed: held-out KL {before:.4f} -> {current:.4f}")
    return compressed.with_model(new)


def check_distinct(source: str | Path, out: str | Path) -> None:
    """``ValueError`` when ``out`` is the folder being healed (it is only read; the result goes elsewhere)."""
    if Path(out).resolve() == Path(source).resolve():
        raise ValueError(f"--out {out} is the model being healed: write the healed model to another folder")


def _streamed(folder: Path, name: str, device, ranks: dict[str, int] | None = None) -> StreamedModel:
    """A causal LM of ``folder`` loaded one block at a time (with ``ranks``, its factorized layers as
    ``LowRankLinear``), its embedding, norm and head resident."""
    config, layout, checkpoint = open_checkpoint(folder, name, "sequential healing takes")
    stream = StreamedModel(config, checkpoint, layout, device)
    for layer, rank in (ranks or {}).items():
        linear = stream.model.get_submodule(layer)
        shell = LowRankLinear.empty(
            linear.out_features, linear.in_features, rank, linear.bias is not None, device="meta"
        )
        set_module(stream.model, layer, shell)
    stream.load_resident()
    return stream


def heal_sequential(
    compressed: str | Path,
    out: str | Path,
    task,
    config: HealConfig | None = None,
    dense: str | Path | None = None,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> Path:
    """Block-level healing of the compressed causal LM folder ``compressed`` into the folder ``out``, one decoder
    block of each model in memory at a time (the same :func:`~lowrank.healing.blocks.heal_blocks` as :func:`heal`);
    ``dense``: the dense model (default: the base model its ``lowrank.json`` names). When the held-out KL rose,
    ``out`` holds the unhealed factors. Returns ``out``. ``config``: ``None`` is a causal LM's recipe, which must be
    at block level."""
    config = config or default_healing("causal-lm")
    if config.end_to_end:
        raise ValueError(
            "sequential healing is block level only (end-to-end healing trains the whole model in memory): "
            "use level='block'"
        )
    folder = Path(compressed)
    check_distinct(folder, out)
    info = load_info(folder)
    if not info.ranks:
        raise ValueError("nothing to heal: the model has no factorized (LowRankLinear) layer")
    dense_name = str(dense or info.base_model)
    dense_folder = source_folder(dense_name)
    if (dense_folder / INFO_FILE).exists():
        raise ValueError(f"{dense_name} is itself compressed: heal toward the dense model it came from")
    comp = _streamed(folder, str(folder), device, info.ranks)
    dense_stream = _streamed(dense_folder, dense_name, device)
    if comp.model.config.vocab_size != dense_stream.model.config.vocab_size:
        raise ValueError(f"the compressed model and the dense model {dense_name} have different vocabularies")
    tokenizer = from_pretrained(AutoTokenizer, folder, local_files_only=True)
    prepare_tokenizer(tokenizer, comp.model.config)
    task = load_task(task)
    check_task_fits(str(folder), "causal-lm", task.kind, task.name)
    train, heldout = heal_batches(task, tokenizer, config)
    start = time.monotonic()
    blocks = BlockRecord()
    count = comp.num_blocks + 1
    with atomic_dir(Path(out), force=force) as tmp:
        writer = ShardWriter(tmp, count)
        writer.write(0, comp.resident_state())
        for index in heal_blocks(
            comp, dense_stream, train, heldout, config, blocks, start + config.time_budget_s, progress
        ):
            writer.write(index + 1, comp.block_state(index))
        kept = "healed" if blocks.heldout_after <= blocks.heldout_before else "unhealed"
        if kept == "unhealed":  # the checkpoint's own blocks, written again over the healed ones
            writer = ShardWriter(tmp, count)
            writer.write(0, comp.resident_state())
            for index in range(comp.num_blocks):
                comp.load_block(index)
                writer.write(index + 1, comp.block_state(index))
                comp.release_block(index)
        writer.finish()
        comp.model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        after = blocks.heldout_after if kept == "healed" else blocks.heldout_before
        record = _recipe(config, task, dense_name, train, heldout, blocks.heldout_before) | {
            "blocks": blocks.to_dict(),
            "kept": kept,
            "heldout_after": after,
            "seconds": time.monotonic() - start,
            "sequential": True,
        }
        save_info(replace(info, healing=record), tmp)
    return Path(out)
