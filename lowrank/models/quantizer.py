"""Plain ``transformers`` loads a compressed folder: the ``lowrank`` quantization method.

A compressed folder's ``config.json`` holds ``quantization_config = {"quant_method": "lowrank", "format_version": 1,
"ranks": {layer: r}, "method": ..., "base_model": ...}`` (:class:`LowRankConfig`). Importing ``lowrank`` registers
the method with transformers (``register_quantization_config`` / ``register_quantizer``), so
``AutoModelFor...from_pretrained(folder)`` builds the model on the meta device, and :class:`LowRankQuantizer`, before
any weight is read, applies the family's layout hook (GPT-2's ``Conv1D`` become ``nn.Linear``) and swaps each listed
``nn.Linear`` ``W`` (out, in) for a ``LowRankLinear`` shell ``U`` (out, r) ``V`` (r, in); transformers then loads the
factors like any parameter (``dtype=``, ``device_map=`` as for a dense model). A layer not listed stays ``nn.Linear``.

Before the shells are built every rank is checked against its layer (:func:`lowrank.layers.check_rank`) and the
safetensors headers (shapes only, no tensor read): a listed layer must have ``U`` (out, r) and ``V`` (r, in), and no
factor may belong to an unlisted layer; else :class:`ModelLoadError`, one line. ``save_pretrained`` writes the ranks of
the model's ``LowRankLinear`` layers as they are then, in the loaded model's own layer names; it writes no
``lowrank.json`` and no model card (a quantizer's hooks are never given the folder), which
:func:`lowrank.save_compressed` of the same model does. Cost: one read of the safetensors headers, one pass over the
modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from lowrank.info import FORMAT_VERSION, INFO_FILE, CompressionInfo
from lowrank.layers import LowRankLinear, check_rank
from lowrank.models.architectures import adapt_layout
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import model_kind

QUANT_METHOD = "lowrank"
CONFIG_FORMAT = 1
FACTORS = ("U", "V")
TAGS = ("lowrank", "low-rank", "compressed")  # hub tags of a compressed model, with its method


class LowRankConfig(QuantizationConfigMixin):
    """``config.json``'s ``quantization_config`` of a compressed model: its ranks, method and base model.

    ``source`` (not saved) names where the ranks were read, for messages: ``config.json`` or ``lowrank.json``.
    A malformed entry (not format 1, ranks that are not whole numbers...) is a one-line :class:`ModelLoadError`.
    """

    def __init__(
        self,
        ranks: Mapping[str, int] | None = None,
        method: str = "",
        base_model: str = "",
        format_version: int = CONFIG_FORMAT,
        quant_method: str = QUANT_METHOD,
        source: str = "config.json",
        **_ignored,
    ):
        if format_version != CONFIG_FORMAT or quant_method != QUANT_METHOD:
            raise ModelLoadError(f"{source}: unsupported lowrank quantization_config format {format_version!r}")
        try:  # the one reader of ranks, method and base model (lowrank.info)
            info = CompressionInfo.from_json(
                {"format_version": FORMAT_VERSION, "ranks": ranks, "method": method, "base_model": base_model}
            )
        except (ValueError, AttributeError) as err:
            raise ModelLoadError(f"{source}: quantization_config: {err}") from err
        self.quant_method = QUANT_METHOD
        self.format_version = CONFIG_FORMAT
        self.ranks = dict(info.ranks)
        self.method = info.method
        self.base_model = info.base_model
        self.source = source

    @classmethod
    def read(cls, data, source: str = "config.json") -> LowRankConfig:
        """The config a ``quantization_config`` entry (dict or config object) records."""
        if isinstance(data, QuantizationConfigMixin):
            data = data.to_dict()
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source}: quantization_config must be an object")
        return cls(**{**data, "source": source})

    @classmethod
    def of(cls, info: CompressionInfo, ranks: Mapping[str, int] | None = None) -> LowRankConfig:
        """The config of ``info`` (``ranks``: the model's layers now, when they differ from ``info.ranks``)."""
        return cls(dict(info.ranks if ranks is None else ranks), info.method, info.base_model)

    def to_dict(self) -> dict:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": CONFIG_FORMAT,
            "method": self.method,
            "base_model": self.base_model,
            "ranks": dict(self.ranks),
        }

    def info(self, kind: str = "") -> CompressionInfo:
        """The :class:`CompressionInfo` this config records (no timings, histories or details)."""
        return CompressionInfo(self.base_model, kind, self.method, dict(self.ranks))


def is_lowrank(quantization_config) -> bool:
    """True for a ``quantization_config`` (a dict or a config object) of the ``lowrank`` method."""
    data = quantization_config
    if isinstance(data, QuantizationConfigMixin):
        data = data.to_dict()
    return isinstance(data, dict) and data.get("quant_method") == QUANT_METHOD


def is_compressed_folder(folder: str | Path) -> bool:
    """True for a folder holding ``lowrank.json`` or a ``config.json`` of the ``lowrank`` quantization method."""
    folder = Path(folder)
    if (folder / INFO_FILE).exists():
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_lowrank(config.get("quantization_config"))


def factor_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of the factors (names ending ``.U`` / ``.V``) in safetensors ``files``: headers only."""
    shapes = {}
    for file in files:
        if not str(file).endswith(".safetensors"):
            continue
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.rpartition(".")[2] in FACTORS:
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def module_name(model: nn.Module, name: str) -> str | None:
    """``name`` (a layer as saved) in ``model``: as it is, or with the base model's prefix dropped or added (a
    ``LlamaForCausalLM`` checkpoint loaded as ``LlamaModel`` and back); None when the model has no such module."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    candidates = [name, name.removeprefix(prefix) if name.startswith(prefix) else None, prefix + name]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            model.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def check_factors(ranks: Mapping[str, int], shapes: Mapping[str, tuple], folder: str, source: str) -> None:
    """:class:`ModelLoadError` unless the factors in ``shapes`` are exactly those of ``ranks`` (read from
    ``source`` in ``folder``, for the message)."""
    listed = {f"{name}.{f}" for name in ranks for f in FACTORS}
    unexpected = sorted(set(shapes) - listed)
    missing = sorted(listed - set(shapes))
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: weights do not match {source} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def check_shapes(name: str, rank: int, dense: nn.Linear, shapes: Mapping[str, tuple], folder: str, source: str):
    """:class:`ModelLoadError` unless ``rank`` suits the layer and its factors are ``U`` (out, r) and ``V`` (r, in)."""
    try:
        check_rank(rank, dense.out_features, dense.in_features, name)
    except ValueError as err:
        raise ModelLoadError(f"{folder} ({source}): {err}") from err
    want = {"U": (dense.out_features, rank), "V": (rank, dense.in_features)}
    got = {f: shapes.get(f"{name}.{f}") for f in FACTORS}
    if got != want:
        raise ModelLoadError(
            f"{folder}: size mismatch for {name}: rank {rank} ({source}) of a {dense.out_features}x"
            f"{dense.in_features} layer needs U {want['U']} and V {want['V']}, the weights hold U {got['U']} and "
            f"V {got['V']}"
        )


def install_shells(model: nn.Module, config: LowRankConfig, shapes: Mapping[str, tuple], folder: str) -> dict:
    """Swap each listed ``nn.Linear`` of ``model`` for an empty ``LowRankLinear`` of its rank (same device and dtype),
    after checking the rank and the factors' shapes; returns the ranks in ``model``'s own layer names."""
    source = INFO_FILE if config.source == INFO_FILE else f"{config.source}'s quantization_config"
    check_factors(config.ranks, shapes, folder, source)
    adapt_layout(model)
    ranks = {}
    for name, rank in config.ranks.items():
        own = module_name(model, name)
        dense = model.get_submodule(own) if own is not None else None
        if not isinstance(dense, nn.Linear):
            raise ModelLoadError(f"{folder} ({source}): {name!r} is not a Linear layer of this model")
        check_shapes(name, rank, dense, shapes, folder, source)
        shell = LowRankLinear.empty(
            dense.out_features,
            dense.in_features,
            rank,
            dense.bias is not None,
            dtype=dense.weight.dtype,
            device=dense.weight.device,
        )
        parent, _, child = own.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, shell)
        ranks[own] = rank
    return ranks


def low_rank_ranks(model: nn.Module) -> dict[str, int]:
    """``{layer: rank}`` of the ``LowRankLinear`` layers of ``model`` now."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


class LowRankQuantizer(HfQuantizer):
    """Builds ``LowRankLinear`` shells before transformers loads a compressed folder's weights into them."""

    requires_calibration = True  # only a compressed folder: from_pretrained never compresses a dense model

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        files = [str(f) for f in checkpoint_files or []]
        folder = str(Path(files[0]).parent) if files else "the checkpoint"
        ranks = install_shells(model, self.quantization_config, factor_shapes(files), folder)
        self.quantization_config.ranks = ranks  # saved again in the names of the model as loaded
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        model.is_quantized = False  # ordinary float parameters: .half(), .float() and .to(dtype) stay allowed
        mark_compressed(model, self.quantization_config.info(model_kind(model.config)))
        return model

    def get_state_dict_and_metadata(self, model):
        """Before ``save_pretrained`` writes config.json: the ranks of the model's layers as they are now."""
        self.quantization_config.ranks = low_rank_ranks(model)
        model.config.quantization_config = self.quantization_config
        return None, {}

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def mark_compressed(model: nn.Module, info: CompressionInfo) -> None:
    """Record ``info`` on a compressed ``model``: ``model.lowrank_info`` and, for a transformers model, a
    :class:`LowRankQuantizer` whose config (the ranks of its ``LowRankLinear`` layers now) is the model config's
    ``quantization_config``, so ``save_pretrained`` writes a folder ``from_pretrained`` loads compressed, and the
    hub tags ``push_to_hub`` gives its card."""
    model.lowrank_info = info
    if not isinstance(model, PreTrainedModel):
        return
    quantizer = getattr(model, "hf_quantizer", None)
    if not isinstance(quantizer, LowRankQuantizer):
        quantizer = LowRankQuantizer(LowRankConfig.of(info))
    quantizer.quantization_config = LowRankConfig.of(info, low_rank_ranks(model))
    model.hf_quantizer = quantizer
    model.config.quantization_config = quantizer.quantization_config
    model.add_model_tags(list(dict.fromkeys(TAGS + (info.method,))))


def register() -> None:
    """Register the ``lowrank`` method with transformers (once; importing :mod:`lowrank` does it)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LowRankConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LowRankQuantizer)


register()
