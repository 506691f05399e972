"""Layer-sequential compression of a causal LM: one decoder block in memory at a time.

The model is built without weights (:mod:`lowrank.models.streamed`); each decoder block in turn is
loaded from the safetensors checkpoint, its layers' statistics collected (:mod:`lowrank.statistics.blockwise`:
none for ``svd``; a forward sweep for activations, on the outputs of the blocks already compressed or of
the dense ones, or of both for ``compensation`` statistics; a streaming gradient sweep of the dense model for
Fisher and gradient moments, which ``kfac_svd_compensated`` takes before its compensated forward sweep; a pruning
mask is refused), each planned ``W`` (out, in) replaced by ``U`` (out, r) ``V`` (r, in) by
:func:`lowrank.compress.factorize_layer` (the step :func:`lowrank.compress` takes), and the block written
as one shard of the output. Peak memory: one block and its factorization workspace, the calibration hidden
states, the embedding, norm and head. Output: the folder :func:`lowrank.load_compressed` reads, written
atomically. :func:`compress_in_blocks` takes the same block loop over an in-memory model, and
:func:`compress_in_memory` is the in-memory entry for every method (that loop for a compensated form, else
:func:`lowrank.compress`); :func:`method_form` says which form of a method runs on a model.
:func:`sequential_reason` decides when ``lowrank compress`` streams on its own (float32 size above
:data:`AUTO_FRACTION` of the available RAM).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.compress import compress, factorize_layer, set_module, write_record
from lowrank.data.tasks import hub_reachable, load_task
from lowrank.evaluation.quality import task_kind_for
from lowrank.files.atomic import atomic_dir
from lowrank.info import CompressionInfo, scalars
from lowrank.loaded import LoadedModel
from lowrank.methods import get_method, run_methods, with_compensation
from lowrank.models.architectures import adapt_layout, block_layout, supported_types
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import (
    available_ram_bytes,
    estimate_parameters,
    load_config,
    prepare_tokenizer,
)
from lowrank.models.packaged import resolve_source
from lowrank.models.pretrained import from_pretrained
from lowrank.models.quantizer import is_compressed_folder, mark_compressed
from lowrank.models.shards import ShardWriter
from lowrank.models.streamed import Blocks, StreamedModel, open_checkpoint, stream_layout
from lowrank.progress import Progress, report
from lowrank.ranks import Ranks, resolve_ranks
from lowrank.statistics.blockwise import INPUTS, BlockStep, block_sweep, needs_gradients, sample, unsupported
from lowrank.statistics.passes import calibration_record, calibration_task
from lowrank.statistics.resolve import needs_task, restrict, statistics_for
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

AUTO_FRACTION = 0.5  # `lowrank compress` streams a causal LM whose float32 copy needs more than this share of free RAM
WORKDIR = ".hidden-states"  # the gradient sweep's block inputs, inside the output's temporary folder
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def source_folder(name: str) -> Path:
    """The local folder of a packaged name, a folder, or a hub id (its cached or downloaded snapshot)."""
    source = resolve_source(name)
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(snapshot_download(source, local_files_only=not hub_reachable(), allow_patterns=HUB_FILES))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot find model {name!r} as a folder or on the hub: {str(err).splitlines()[0]}"
        ) from err


def sequential_reason(name_or_path: str | Path, fraction: float = AUTO_FRACTION) -> str | None:
    """Why ``name_or_path`` should be compressed sequentially (a one-line notice), or None.

    True for a causal LM with a known decoder layout whose float32 size (estimated from the config
    on the meta device) is above ``fraction`` of the available RAM; never for a compressed folder
    or a model whose config cannot be read (the in-memory path reports that)."""
    name = str(name_or_path)
    if is_compressed_folder(name):
        return None
    try:
        source = resolve_source(name)
        config = load_config(source, name, Path(source).exists() or not hub_reachable())
    except ModelLoadError:
        return None
    if stream_layout(config) is None:
        return None
    need, have = 4 * estimate_parameters(config), available_ram_bytes()
    if need <= fraction * have:
        return None
    return (
        f"{name} takes {need / 2**30:.1f} GiB in float32, more than {fraction:.0%} of the {have / 2**30:.1f} GiB "
        "of available RAM: compressing it one decoder block at a time (--sequential)"
    )


def _tokenizer(folder: Path):
    try:
        return from_pretrained(AutoTokenizer, folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {folder}: {str(err).splitlines()[0]}") from err


def _inputs(spec, inputs: str | None) -> str:
    """``inputs``, or by default ``"compensated"`` for a method of sweep-only statistics, else ``"compressed"``."""
    swept = spec.block_sweep
    inputs = inputs or ("compensated" if swept else "compressed")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if swept != (inputs == "compensated"):
        raise ValueError(
            f"method {spec.name!r} takes {'only' if swept else 'no'} compensated inputs, got inputs={inputs!r}"
        )
    return inputs


def _calibration(spec, task, tokenizer, settings: StatisticsSettings, gradients: bool, kind: str) -> list[dict]:
    """The calibration batches a method's statistics take (none without data-derived statistics); gradients of a
    model of ``kind`` need the loss of its own kind of task (a causal LM's next tokens, a classifier's labels)."""
    if not needs_task(spec.needs):
        return []
    task = calibration_task(task, settings)
    if task is None:
        raise ValueError(f"method {spec.name!r} needs statistics from calibration data: pass a task")
    task = load_task(task)
    if gradients and task.kind != task_kind_for(kind):
        model, wanted = (
            ("causal LM", "a language-modelling task (e.g. lee)")
            if kind == "causal-lm"
            else ("classifier", "a classification task")
        )
        raise ValueError(f"the gradients of a {model} need {wanted}; {task.name!r} is a {task.kind} task")
    return sample(task, tokenizer, settings)


def factorize_block(step: BlockStep, plan: dict[str, int], layout, info: CompressionInfo, options: dict) -> None:
    """Replace each planned Linear of the block ``step`` holds by its factorization, with the block's statistics."""
    prefix = layout.block_name(step.index) + "."
    for layer in [layer for layer in plan if layer.startswith(prefix)]:
        local = layer.removeprefix(prefix)
        dense = step.block.get_submodule(local)
        set_module(step.block, local, factorize_layer(layer, dense, plan[layer], info, step.stats.get(layer), options))


def _sweep_record(gradients: bool, inputs: str, batches: list[dict], blocks: int) -> dict:
    statistics = (
        "gradient sweep (dense model)" if gradients else (f"forward sweep ({inputs} inputs)" if batches else "none")
    )
    if gradients and inputs == "compensated":
        statistics = "gradient sweep (dense model), then forward sweep (compensated inputs)"
    return {"statistics": statistics, "examples": sum(len(b["input_ids"]) for b in batches), "blocks": blocks}


def _record_calibration(info: CompressionInfo, task, tokenizer, settings: StatisticsSettings, batches) -> None:
    if batches:
        info.calibration = calibration_record(task, tokenizer, settings, batches)


def compress_in_blocks(
    loaded: LoadedModel,
    ranks: Ranks,
    method: str,
    task=None,
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
    inputs: str | None = None,
    stats: dict | None = None,
    align: int = DEFAULT_ALIGN,
    **options,
) -> LoadedModel:
    """A compressed copy of the in-memory causal LM or classifier ``loaded``, factorized block by block by the sweep
    and the per-block step of :func:`compress_sequential` (:class:`~lowrank.models.streamed.Blocks` instead of a
    checkpoint on disk): the in-memory path of methods whose statistics only a block sweep computes
    (``compensation``); arguments as in :func:`compress_sequential`. ``stats``: the dense-model statistics of
    the method's other kinds (e.g. ``gradients`` from the cached :func:`lowrank.statistics_for`), instead of a
    dense sweep."""
    spec = get_method(method)
    spec.check_options(options)
    inputs = _inputs(spec, inputs)
    layout = block_layout(loaded.kind, loaded.model.config)
    if layout is None or unsupported(spec.needs):
        raise ValueError(
            f"block-by-block compression in memory takes {block_models()} and a method of collected statistics; "
            f"use lowrank.compress for {method!r} on {loaded.name}"
        )
    new = adapt_layout(copy.deepcopy(loaded.model))
    plan = resolve_ranks(new, ranks, align)
    gradients = needs_gradients(spec.needs) and stats is None
    batches = _calibration(spec, task, loaded.tokenizer, settings, gradients, loaded.kind)
    info = CompressionInfo(
        base_model=loaded.name,
        kind=loaded.kind,
        method=method,
        ranks=plan,
        options=scalars(spec.with_defaults(options)),
    )
    blocks = Blocks(new, layout, loaded.device)
    with tempfile.TemporaryDirectory(prefix="lowrank-blocks-") as workdir:
        sweep = block_sweep(blocks, batches, list(plan), spec.needs, inputs, Path(workdir) / WORKDIR, settings, stats)
        for done, step in enumerate(sweep):
            report(progress, done, blocks.num_blocks, f"{method}: block {step.index}")
            factorize_block(step, plan, layout, info, options)
    report(progress, blocks.num_blocks, blocks.num_blocks, f"{method}: done")
    info.sequential = _sweep_record(gradients, inputs, batches, blocks.num_blocks)
    _record_calibration(info, task, loaded.tokenizer, settings, batches)
    mark_compressed(new, info)
    return loaded.with_model(new)


def block_models() -> str:
    """The models a block sweep runs on, in words (for one-line errors)."""
    return (
        f"a causal LM of type {', '.join(supported_types('causal-lm'))} or a classifier of type "
        f"{', '.join(supported_types('classifier'))}"
    )


def sweepable(loaded: LoadedModel) -> bool:
    """True when a block sweep runs on ``loaded``: a causal LM or classifier of a family with a block layout."""
    return block_layout(loaded.kind, loaded.model.config) is not None


def check_runnable(methods: Sequence[str], loaded: LoadedModel) -> None:
    """``ValueError`` (one line) when a method of ``methods`` takes a block sweep and ``loaded`` has none."""
    cannot = [m for m in methods if m not in run_methods(sweepable(loaded))]
    if cannot:
        raise ValueError(
            f"{', '.join(cannot)} fit each block to the blocks compressed before it, which runs on {block_models()} "
            f"only; {loaded.name} is not one: use the plain method"
        )


def method_form(loaded: LoadedModel, method: str, compensate: bool | None = None) -> str:
    """The method that runs for ``method`` on ``loaded``: its error-compensated form where ``compensate`` (``None``:
    :data:`lowrank.methods.COMPENSATE` of ``loaded.kind``) asks for it and a block sweep runs, else ``method``
    (:func:`lowrank.methods.with_compensation`)."""
    return with_compensation(method, compensate, sweepable(loaded), loaded.kind)


def compress_in_memory(
    loaded: LoadedModel,
    ranks: Ranks,
    method: str,
    task=None,
    settings: StatisticsSettings = DEFAULT,
    stats: dict | None = None,
    progress: Progress | None = None,
    align: int = DEFAULT_ALIGN,
    **options,
) -> LoadedModel:
    """A compressed copy of the in-memory ``loaded`` by ``method`` as named, whatever its statistics: a method of
    sweep-only statistics (an error-compensated form) through :func:`compress_in_blocks`, given the dense-model
    kinds of ``stats`` (:attr:`~lowrank.methods.Method.dense_needs`); any other through :func:`lowrank.compress`,
    given its kinds of ``stats``. ``stats=None``: computed by :func:`lowrank.statistics_for` (cached; its label
    settings and checks) on ``task``'s calibration sample of ``settings``, which the record names
    (``lowrank_info.calibration``) either way."""
    spec = get_method(method)
    spec.check_options(options)  # a bad option or budget is refused before the statistics pass
    resolve_ranks(loaded.model, ranks, align)
    needs = spec.dense_needs  # what one pass of the dense model gives (all of a plain method's needs), cached
    if stats is None and needs:
        stats = statistics_for(loaded, task, needs, settings, progress=progress)
    given = restrict(stats, needs) if stats is not None and needs else None
    if spec.block_sweep:
        return compress_in_blocks(loaded, ranks, method, task, settings, progress, None, given, align, **options)
    small = compress(loaded, ranks, method=method, stats=given, progress=progress, align=align, **options)
    if needs_task(spec.needs):
        small.model.lowrank_info.calibration = calibration_record(task, loaded.tokenizer, settings)
    return small


def compress_sequential(
    path_or_name: str | Path,
    ranks: Ranks,
    method: str = "svd",
    out: str | Path | None = None,
    task=None,
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
    inputs: str | None = None,
    device: str | torch.device = "cpu",
    align: int = DEFAULT_ALIGN,
    **options,
) -> Path:
    """Compress a causal LM block by block into the folder ``out``; returns ``out`` (see the module docstring).

    ``ranks``, ``method``, ``align`` and ``options`` as in :func:`lowrank.compress`; ``task`` and ``settings``:
    the calibration sample of :func:`lowrank.statistics_for` (needed by methods with statistics);
    ``inputs``: ``"compressed"`` (default) or ``"dense"`` block inputs for activation statistics, ``"compensated"``
    (the default and only choice for a method of ``compensation`` statistics); gradient statistics always come
    from the dense model. Everything is checked before the first block.
    """
    if out is None:
        raise ValueError("compress_sequential writes the compressed model to a folder: pass out=")
    spec = get_method(method)
    spec.check_options(options)
    missing = unsupported(spec.needs)
    if missing:
        raise ValueError(
            f"sequential mode cannot compute {', '.join(missing)} statistics (method {method!r}); "
            "compress this model in memory"
        )
    inputs = _inputs(spec, inputs)
    name = str(path_or_name)
    folder = source_folder(name)
    config, layout, checkpoint = open_checkpoint(folder, name, "sequential mode compresses")
    tokenizer = _tokenizer(folder)
    prepare_tokenizer(tokenizer, config)
    stream = StreamedModel(config, checkpoint, layout, device)
    plan = resolve_ranks(stream.model, ranks, align)
    gradients = needs_gradients(spec.needs)
    batches = _calibration(spec, task, tokenizer, settings, gradients, "causal-lm")
    stream.load_resident()
    info = CompressionInfo(
        base_model=name, kind="causal-lm", method=method, ranks=plan, options=scalars(spec.with_defaults(options))
    )
    out = Path(out)
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp, stream.num_blocks + 1)
        writer.write(0, stream.resident_state())
        sweep = block_sweep(stream, batches, list(plan), spec.needs, inputs, tmp / WORKDIR, settings)
        for done, step in enumerate(sweep):
            report(progress, done, stream.num_blocks, f"{method}: block {step.index}")
            factorize_block(step, plan, layout, info, options)
            writer.write(step.index + 1, stream.block_state(step.index))
        report(progress, stream.num_blocks, stream.num_blocks, f"{method}: done")
        writer.finish()
        tokenizer.save_pretrained(tmp)
        info.sequential = _sweep_record(gradients, inputs, batches, stream.num_blocks)
        _record_calibration(info, task, tokenizer, settings, batches)
        write_record(tmp, stream.model.config, info)
    return out
