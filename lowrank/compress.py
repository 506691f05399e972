"""Whole-model compression: replace compressible ``nn.Linear`` layers by ``LowRankLinear``.

``compress(model, ranks, method)`` factorizes each selected weight ``W`` (out, in)
into ``U`` (out, r) ``V`` (r, in) with a registered method and returns a new model
(the input is untouched). ``ranks`` is ``{module_name: rank}`` or a float fraction
``f`` of each layer's parameters to keep, i.e. ``r = floor(f * out * in / (out + in))``;
layers whose rank would reach break-even stay dense, and ``f = 1`` means the dense model.

``save_compressed`` / ``load_compressed`` store the model as safetensors plus
``lowrank.json`` (ranks, method, base model) next to the base config and tokenizer.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .architectures import compressible_linears
from .assets import atomic_dir
from .factorize import factorize, get_method
from .layers import LowRankLinear, break_even_rank, check_rank
from .progress import Progress, report

FORMAT_VERSION = 1
Ranks = Union[dict[str, int], float]


@dataclass
class CompressionInfo:
    """What was done to a model; attached to it as ``model.lowrank_info`` and saved as ``lowrank.json``."""

    base_model: str
    kind: str
    method: str
    ranks: dict[str, int]
    options: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}


def _unwrap(model):
    """Accept a ``LoadedModel`` or a bare module."""
    return (model.model, model) if hasattr(model, "tokenizer") and hasattr(model, "model") else (model, None)


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (out, in)}`` of every compressible dense Linear."""
    model, _ = _unwrap(model)
    return {name: tuple(m.weight.shape) for name, m in compressible_linears(model).items()}


def fraction_rank(out_features: int, in_features: int, fraction: float) -> Optional[int]:
    """Rank keeping ``fraction`` of a layer's parameters, or ``None`` when that is at/above break-even."""
    rank = max(1, int(fraction * out_features * in_features // (out_features + in_features)))
    return None if rank >= break_even_rank(out_features, in_features) else rank


def resolve_ranks(model: nn.Module, ranks: Ranks) -> dict[str, int]:
    """Validate ``ranks`` against the model and turn a fraction into per-layer ranks.

    Raises ``ValueError`` for unknown layer names, a fraction outside (0, 1], or any
    rank that is < 1, above ``min(out, in)`` or at/above break-even.
    """
    shapes = linear_shapes(model)
    if isinstance(ranks, (int, float)) and not isinstance(ranks, bool):
        fraction = float(ranks)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a kept fraction must be in (0, 1], got {ranks}")
        if fraction == 1.0:
            return {}  # keep everything: the dense model
        resolved = {n: fraction_rank(o, i, fraction) for n, (o, i) in shapes.items()}
        return {n: r for n, r in resolved.items() if r is not None}
    if not isinstance(ranks, dict):
        raise ValueError(f"ranks must be a dict {{layer: rank}} or a float fraction, got {type(ranks).__name__}")
    unknown = sorted(set(ranks) - set(shapes))
    if unknown:
        raise ValueError(f"not compressible Linear layers of this model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for name, rank in ranks.items():
        check_rank(rank, *shapes[name], name=name)
    return {n: int(r) for n, r in ranks.items()}


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def compress(model, ranks: Ranks, method: str = "svd", importance: Optional[dict[str, torch.Tensor]] = None,
             progress: Optional[Progress] = None, base_model: Optional[str] = None, **options):
    """Return a copy of ``model`` whose selected Linear layers are ``LowRankLinear``.

    ``importance``: ``{name: tensor like the weight}`` for weighted methods.
    ``options`` go to the factorization method (e.g. ``solver="als"``).
    Accepts a ``LoadedModel`` (returns a ``LoadedModel`` sharing the tokenizer) or an ``nn.Module``.
    Cost: one factorization per selected layer.
    """
    module, loaded = _unwrap(model)
    plan = resolve_ranks(module, ranks)
    spec = get_method(method)
    if spec.needs_importance:
        missing = [n for n in plan if importance is None or n not in importance]
        if missing:
            raise ValueError(f"method {method!r} needs importance for every layer; missing {missing[:3]} (run Fisher estimation first)")
    new = copy.deepcopy(module)
    linears = compressible_linears(new)
    info = CompressionInfo(
        base_model=base_model or (loaded.name if loaded else getattr(module.config, "_name_or_path", "")),
        kind=loaded.kind if loaded else "",
        method=method,
        ranks=plan,
        options={k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))},
    )
    for step, (name, rank) in enumerate(plan.items()):
        report(progress, step, len(plan), f"{method}: {name}")
        dense = linears[name]
        start = time.perf_counter()
        weight = dense.weight.detach().float()
        imp = importance.get(name) if importance is not None else None
        result = factorize(weight, rank, method, importance=None if imp is None else imp.to(weight.device).float(), **options)
        info.seconds[name] = time.perf_counter() - start
        if result.history:
            info.history[name] = [float(e) for e in result.history]
        dtype = dense.weight.dtype
        bias = None if dense.bias is None else dense.bias.detach()
        set_module(new, name, LowRankLinear(result.U.to(dtype), result.V.to(dtype), bias, name=name))
    report(progress, len(plan), len(plan), f"{method}: done")
    new.lowrank_info = info
    if loaded is None:
        return new
    return type(loaded)(new, loaded.tokenizer, loaded.kind, loaded.name, loaded.path)


def low_rank_layers(model: nn.Module) -> dict[str, LowRankLinear]:
    model, _ = _unwrap(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def save_compressed(model, directory: Union[str, Path], tokenizer=None) -> Path:
    """Write config, tokenizer, ``model.safetensors`` and ``lowrank.json`` atomically to ``directory``."""
    from safetensors.torch import save_model

    module, loaded = _unwrap(model)
    tokenizer = tokenizer or (loaded.tokenizer if loaded else None)
    info = getattr(module, "lowrank_info", None)
    if info is None:
        raise ValueError("this model was not produced by lowrank.compress (no lowrank_info); nothing to save")
    ranks = {n: m.rank for n, m in low_rank_layers(module).items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        module.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_model(module, str(tmp / "model.safetensors"))
        meta = info.to_json() | {"ranks": ranks}
        (tmp / "lowrank.json").write_text(json.dumps(meta, indent=2))
    return directory


def load_compressed(directory: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Rebuild a model saved by :func:`save_compressed`; returns a ``LoadedModel``."""
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .models import LoadedModel, ModelLoadError, model_kind

    directory = Path(directory)
    meta_path = directory / "lowrank.json"
    if not meta_path.exists():
        raise ModelLoadError(f"{directory} is not a compressed model folder (no lowrank.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{directory}: unsupported lowrank.json format {meta.get('format_version')}")
    config = AutoConfig.from_pretrained(directory)
    kind = meta.get("kind") or model_kind(config)
    factory = {"causal-lm": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}.get(kind, AutoModel)
    model = factory.from_config(config)
    for name, rank in meta["ranks"].items():
        dense = model.get_submodule(name)
        shell = LowRankLinear.empty(dense.out_features, dense.in_features, rank, dense.bias is not None, dtype=dense.weight.dtype)
        set_module(model, name, shell)
    missing, unexpected = load_weights(model, str(directory / "model.safetensors"), strict=False)
    if unexpected or [m for m in missing if not _is_tied(model, m)]:
        raise ModelLoadError(f"{directory}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info_fields = {k: meta[k] for k in ("base_model", "kind", "method", "ranks", "options", "seconds", "history") if k in meta}
    model.lowrank_info = CompressionInfo(**info_fields)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory) if (directory / "tokenizer_config.json").exists() else None
    return LoadedModel(model, tokenizer, kind, meta["base_model"], str(directory))


def _is_tied(model: nn.Module, key: str) -> bool:
    """True for parameters that safetensors skips because they share storage with another (tied embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = tied.keys() if isinstance(tied, dict) else tied
    return any(key == k or key.endswith(k) for k in keys)
