"""One cache-key scheme for every statistic: the model's weights, the task's data and the sampling settings.

Entries live under ``<cache>/<kind>/<key>.safetensors``; the key hashes the model name, a
fingerprint of its compressible weights, the task's name, source and split sizes, and the
settings, so a changed model, task or setting never reads another's entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save
from torch import nn

from lowrank.io import atomic_write_bytes, cache_dir
from lowrank.models.architectures import compressible_linears


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every compressible weight's shape and a strided sample of its values."""
    digest = hashlib.sha1()
    for name, module in compressible_linears(model).items():
        w = module.weight.detach().flatten()
        digest.update(name.encode())
        digest.update(str(tuple(module.weight.shape)).encode())
        digest.update(w[:: max(1, w.numel() // 4096)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def entry_path(kind: str, loaded, task, settings: dict) -> Path:
    """Cache file of statistic ``kind`` for ``loaded`` on ``task`` sampled with ``settings``."""
    key = json.dumps({"model": loaded.name, "weights": weights_fingerprint(loaded.model), "task": task.name,
                      "task_source": task.source, "sizes": task.sizes(), **settings}, sort_keys=True)
    return cache_dir() / kind / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"


def read(path: Path) -> Optional[dict[str, torch.Tensor]]:
    """The tensors stored at ``path``, or ``None`` when there is no entry."""
    return load_file(str(path)) if path.exists() else None


def write(path: Path, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata={k: str(v) for k, v in settings.items()}))
