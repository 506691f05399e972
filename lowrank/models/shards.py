"""Safetensors checkpoint folders, single-file or sharded (Hugging Face's layout): read by prefix, write shards.

A folder holds ``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` with
``model.safetensors.index.json`` = ``{"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}``.

* :class:`Checkpoint` maps every tensor name to its file and reads only the tensors under a
  module prefix (``safe_open``: each tensor is memory-mapped, so reading a block costs that
  block's pages and dropping its tensors gives them back);
* :class:`ShardWriter` writes one shard per call and the index at the end;
* :func:`load_into` fills a model's parameters from either layout, one file at a time
  (peak: the model plus its largest file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lowrank.models.errors import ModelLoadError
from lowrank.validate import parse_json

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def weight_map(folder: str | Path) -> dict[str, str]:
    """``{tensor name: file name}`` of a checkpoint folder (sharded index, else the single file)."""
    folder = Path(folder)
    if (folder / INDEX).exists():
        try:
            return dict(parse_json((folder / INDEX).read_bytes(), str(folder / INDEX))["weight_map"])
        except (ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{folder / INDEX} is not a safetensors index ({err})") from err
    if (folder / SINGLE).exists():
        with safe_open(str(folder / SINGLE), framework="pt") as handle:
            return {name: SINGLE for name in handle.keys()}
    raise ModelLoadError(f"{folder} has no safetensors weights ({SINGLE} or {INDEX})")


class Checkpoint:
    """The tensors of a checkpoint folder, read by module prefix without loading the rest."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = weight_map(self.folder)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(
        self, prefix: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The tensors named ``prefix + key``, as ``{key: tensor}`` (memory-mapped on the CPU; cast to ``dtype``)."""
        by_file: dict[str, list[str]] = {}
        for name, file in self.files.items():
            if name.startswith(prefix):
                by_file.setdefault(file, []).append(name)
        out = {}
        for file, names in by_file.items():
            path = self.folder / file
            if not path.exists():
                raise ModelLoadError(f"{self.folder}: shard {file} listed in {INDEX} is missing")
            with safe_open(str(path), framework="pt") as handle:
                for name in names:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    out[name[len(prefix) :]] = tensor.to(device)
        return out


def shard_name(index: int, count: int) -> str:
    """File name of shard ``index`` (0-based) of ``count``: ``model-00001-of-00003.safetensors``."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


class ShardWriter:
    """Writes ``count`` shards into ``folder`` (one :meth:`write` each, any order), then the index (:meth:`finish`)."""

    def __init__(self, folder: str | Path, count: int):
        self.folder, self.count = Path(folder), count
        self.files: dict[str, str] = {}
        self.written: set[int] = set()
        self.total_size = 0

    def write(self, index: int, tensors: Mapping[str, torch.Tensor]) -> str:
        if not 0 <= index < self.count or index in self.written:
            raise ValueError(f"shard {index} is out of range 0..{self.count - 1} or already written")
        name = shard_name(index, self.count)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(self.folder / name),
            metadata={"format": "pt"},
        )
        self.files.update({key: name for key in tensors})
        self.total_size += sum(v.numel() * v.element_size() for v in tensors.values())
        self.written.add(index)
        return name

    def finish(self) -> Path:
        missing = sorted(set(range(self.count)) - self.written)
        if missing:
            raise ValueError(f"shards {missing[:3]} were never written")
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.files.items()))}
        path = self.folder / INDEX
        path.write_text(json.dumps(index, indent=2))
        return path


def load_into(model: nn.Module, folder: str | Path) -> tuple[list[str], list[str]]:
    """Load a checkpoint folder's tensors into ``model`` (``strict=False``); returns ``(missing, unexpected)``.

    The single-file layout goes through safetensors' ``load_model`` (tied duplicates are not
    reported missing); shards are loaded one file at a time."""
    folder = Path(folder)
    if not (folder / INDEX).exists():
        if not (folder / SINGLE).exists():
            raise ModelLoadError(f"{folder} has no safetensors weights ({SINGLE} or {INDEX})")
        missing, unexpected = safetensors.torch.load_model(model, str(folder / SINGLE), strict=False)
        return list(missing), list(unexpected)
    expected = set(model.state_dict())
    seen: set[str] = set()
    unexpected: list[str] = []
    for file in sorted(set(weight_map(folder).values())):
        part = load_file(str(folder / file))
        unexpected += model.load_state_dict(part, strict=False).unexpected_keys
        seen |= set(part)
    return sorted(expected - seen), unexpected
