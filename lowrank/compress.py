"""Compression: each selected ``nn.Linear`` ``W`` (out, in) becomes a ``LowRankLinear`` ``U`` (out, r) ``V`` (r, in).

:func:`factorize_layer` is the one step both paths take per layer: factorize ``W`` with a registered
method, record its seconds, solver history and scalar facts in the :class:`CompressionInfo`, and return
the layer. :func:`compress` takes it over a whole model in memory (a new model, the input untouched);
:func:`lowrank.compress_sequential` over one decoder block at a time. ``ranks`` is ``{layer: r}`` or a
fraction ``f`` of each layer's parameters, ``r* = f * out * in / (out + in)`` rounded down to a multiple of
``align`` (:mod:`lowrank.alignment`); a layer at or above break-even stays dense. Cost: one factorization per layer; ``r * (out + in)`` weights instead of ``out * in``.

:func:`save_compressed` / :func:`load_compressed` store the model as safetensors plus ``lowrank.json``
(:mod:`lowrank.info`) and a model card next to the config (with the ``lowrank`` quantization config, so transformers'
``from_pretrained`` loads it: :mod:`lowrank.models.quantizer`) and tokenizer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.card import CARD_FILE, model_card
from lowrank.files.atomic import atomic_dir, recover
from lowrank.files.readers import read_whole
from lowrank.info import INFO_FILE, CompressionInfo, load_info, save_info, scalars
from lowrank.layers import LowRankLinear
from lowrank.loaded import LoadedModel, unwrap
from lowrank.methods import factorize, get_method
from lowrank.methods.registry import layer_stats
from lowrank.models.architectures import adapt_layout, compressible_linears
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import (
    READ_ERRORS,
    auto_class,
    check_finite,
    check_fits_in_memory,
    model_kind,
    read_error,
    read_model,
)
from lowrank.models.packaged import resolve_source
from lowrank.models.pretrained import from_pretrained, load_weights, refuse_own_code
from lowrank.models.quantizer import LowRankConfig, is_compressed_folder, is_lowrank, mark_compressed
from lowrank.progress import Progress, report
from lowrank.ranks import Ranks, resolve_ranks
from lowrank.speed import SpeedSettings, apply_speed, optimize_speed


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def factorize_layer(
    name: str,
    dense: nn.Linear,
    rank: int,
    info: CompressionInfo,
    stats: Mapping[str, torch.Tensor] | None = None,
    options: Mapping | None = None,
) -> LowRankLinear:
    """``dense`` as a rank-``rank`` ``LowRankLinear`` by ``info.method`` (its dtype and bias kept); the seconds,
    solver history and scalar facts of the factorization are recorded in ``info`` under ``name``.

    ``stats``: the layer's statistics; ``options``: the method's. Cost: one factorization of ``W`` in float32.
    """
    start = time.perf_counter()
    result = factorize(dense.weight.detach().float(), rank, info.method, stats=stats, **(options or {}))
    info.seconds[name] = time.perf_counter() - start
    if result.history:
        info.history[name] = [float(e) for e in result.history]
    info.details[name] = scalars(result.info)
    dtype = dense.weight.dtype
    bias = None if dense.bias is None else dense.bias.detach()
    return LowRankLinear(result.U.to(dtype), result.V.to(dtype), bias, name=name)


def compress(
    model,
    ranks: Ranks,
    method: str = "svd",
    stats: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    importance: Mapping[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
    base_model: str | None = None,
    align: int = DEFAULT_ALIGN,
    **options,
):
    """Return a copy of ``model`` whose selected Linear layers are ``LowRankLinear``.

    ``stats``: ``{layer: {key: tensor}}`` from :func:`lowrank.statistics.statistics_for`
    (each layer gets its own); ``importance``: ``{layer: tensor like the weight}``, shorthand
    for the method's element-wise statistic (Fisher for fwsvd/tfwsvd). ``align``: a kept fraction's ranks are
    multiples of it (:mod:`lowrank.alignment`). ``options`` go to
    the method (e.g. ``solver="als"``) and are checked before any work. Accepts a
    ``LoadedModel`` (returns a ``LoadedModel`` sharing the tokenizer) or an ``nn.Module``.
    Cost: one factorization per selected layer.
    """
    module, loaded = unwrap(model)
    spec = get_method(method)
    spec.check_options(options)
    if spec.block_sweep:
        raise ValueError(
            f"method {method!r} fits each block given the blocks compressed before it: compress with "
            "lowrank.compress_in_memory (or compress_in_blocks) in memory, or lowrank.compress_sequential"
        )
    new = adapt_layout(copy.deepcopy(module))
    plan = resolve_ranks(new, ranks, align)
    linears = compressible_linears(new)
    per_layer = {}
    for name in plan:  # every layer's statistics are checked before the first factorization
        weight = linears[name].weight
        imp = None if importance is None or name not in importance else importance[name].to(weight.device).float()
        per_layer[name] = layer_stats(spec, weight.detach().float(), imp, (stats or {}).get(name), layer=name)
    info = CompressionInfo(
        base_model=base_model or (loaded.name if loaded else getattr(module.config, "_name_or_path", "")),
        kind=loaded.kind if loaded else "",
        method=method,
        ranks=plan,
        options=scalars(spec.with_defaults(options)),
    )
    for step, (name, rank) in enumerate(plan.items()):
        report(progress, step, len(plan), f"{method}: {name}")
        set_module(new, name, factorize_layer(name, linears[name], rank, info, per_layer.pop(name), options))
    report(progress, len(plan), len(plan), f"{method}: done")
    mark_compressed(new, info)
    return new if loaded is None else loaded.with_model(new)


def low_rank_layers(model: nn.Module) -> dict[str, LowRankLinear]:
    model, _ = unwrap(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def save_compressed(
    model,
    directory: str | Path,
    tokenizer=None,
    force: bool = False,
    evaluation=None,
    reference=None,
    speed: SpeedSettings | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write config, tokenizer, ``model.safetensors``, ``lowrank.json`` and the model card atomically to ``directory``.

    The folder loads with :func:`load_compressed` and, after ``import lowrank``, with transformers' own
    ``from_pretrained`` (:func:`write_record`). ``evaluation`` / ``reference``: measurements of this model and of
    its dense base for the card (:mod:`lowrank.card`). ``speed``: first give each factorized layer its fastest form
    at that batch on that device (:func:`lowrank.speed.optimize_speed`, in place: merged layers become
    ``nn.Linear``), recorded in the folder. An existing ``directory`` is replaced only if
    :func:`lowrank.files.outputs.writable_output` allows it (``force`` included); otherwise ``OutputError`` (a
    ``ValueError``) and nothing is touched.
    """
    module, loaded = unwrap(model)
    tokenizer = tokenizer or (loaded.tokenizer if loaded else None)
    info = getattr(module, "lowrank_info", None)
    if info is None:
        raise ValueError("this model was not produced by lowrank.compress (no lowrank_info); nothing to save")
    if speed is not None:
        optimize_speed(module, speed, progress=progress)
        info = module.lowrank_info
    info = replace(info, ranks={n: m.rank for n, m in low_rank_layers(module).items()})
    directory = Path(directory)
    with atomic_dir(directory, force=force) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_model(module, str(tmp / "model.safetensors"))
        write_record(tmp, module.config, info, evaluation, reference)
    return directory


def write_record(folder: Path, config, info: CompressionInfo, evaluation=None, reference=None) -> None:
    """The files that make ``folder`` a compressed model: ``config.json`` with the ``lowrank`` quantization config
    of ``info.ranks`` (:mod:`lowrank.models.quantizer`), ``lowrank.json`` and the model card ``README.md``."""
    config = copy.deepcopy(config)
    config.quantization_config = LowRankConfig.of(info)
    config.save_pretrained(folder)
    save_info(info, folder)
    (folder / CARD_FILE).write_text(model_card(info, config, evaluation, reference))


def load_compressed(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Rebuild a model saved by :func:`save_compressed` (or by ``save_pretrained`` of one); returns a ``LoadedModel``.

    The one loader is transformers' ``from_pretrained`` with the ``lowrank`` quantization method
    (:mod:`lowrank.models.quantizer`), given the ranks of ``lowrank.json`` (else of ``config.json``); around it:
    first a save that was killed mid-replacement is repaired (:func:`lowrank.files.atomic.recover`) and a folder
    that asks to run code of its own is refused (:func:`lowrank.models.pretrained.refuse_own_code`); the model must
    fit in RAM (the same estimate as ``load_model``) and every rank is checked against its layer and the weights'
    shapes before anything is allocated. A broken folder (unreadable ``lowrank.json`` or weights, ranks that
    disagree with the weights or between ``lowrank.json`` and ``config.json``, NaN or infinite values) raises
    :class:`ModelLoadError` naming the folder. Every file comes from one version of a folder another process
    replaces meanwhile (:func:`lowrank.files.readers.read_whole`: else ``FolderReplaced``, "being replaced, retry").
    """
    directory = Path(directory)
    recover(directory)
    refuse_own_code(directory)
    return read_whole(directory, lambda: _read_compressed(directory, device, dtype))


def _read_compressed(directory: Path, device: str | torch.device, dtype: torch.dtype = torch.float32):
    try:
        config = from_pretrained(AutoConfig, directory)
        saved = getattr(config, "quantization_config", None)
        if (directory / INFO_FILE).exists() or not is_lowrank(saved):
            info, source = load_info(directory), INFO_FILE
        else:
            info, source = LowRankConfig.read(saved).info(), "config.json"
        check_fits_in_memory(config, str(directory))  # ranks below break-even keep the model under its dense size
        info.kind = info.kind or model_kind(config)
        config.quantization_config = {**LowRankConfig.of(info).to_dict(), "source": source}  # read as a dict
        model = load_weights(auto_class(info.kind), directory, config=config, dtype=dtype)
        apply_speed(model, info.speed)  # compiled forms (merged layers were saved dense)
    except ModelLoadError:
        raise
    except (*READ_ERRORS, AttributeError, TypeError, RuntimeError) as err:  # a layer or shape lowrank.json invents
        raise ModelLoadError(f"{directory}: cannot rebuild the compressed model: {read_error(err, directory)}") from err
    if is_lowrank(saved) and source == INFO_FILE and LowRankConfig.read(saved).ranks != info.ranks:
        raise ModelLoadError(
            f"{directory}: the ranks in config.json's quantization_config differ from lowrank.json's; "
            "transformers' from_pretrained would not load this folder (save it again)"
        )
    check_finite(model, str(directory))
    model.lowrank_info = info
    model.to(device).eval()
    tokenizer = from_pretrained(AutoTokenizer, directory) if (directory / "tokenizer_config.json").exists() else None
    return LoadedModel(model, tokenizer, info.kind, info.base_model, str(directory))


def load_any(name: str | Path, device: str | torch.device = "cpu", task=None) -> LoadedModel:
    """A compressed folder (``lowrank.json``, or the ``lowrank`` quantization config) via :func:`load_compressed`,
    else :func:`lowrank.load_model`; either from one version of a folder being replaced
    (:func:`lowrank.files.readers.read_whole`)."""
    source = Path(resolve_source(str(name)))  # also repairs a save killed mid-replacement

    def read():
        if is_compressed_folder(source):
            return _read_compressed(source, device)
        return read_model(str(name), str(source), task=task, device=device)

    return read_whole(source, read)
