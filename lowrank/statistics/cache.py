"""One cache-key scheme for every statistic: the model's weights, the task's data and the sampling settings.

Entries live under ``<cache>/<kind>/<key>.safetensors``; the key hashes the model name, a
fingerprint of its compressible weights, the task's name, source and the hash of its data
(:meth:`lowrank.data.tasks.Task.content_hash`), and the settings, so a changed model, task or
setting never reads another's entry. Each entry stores the SHA-256 of its tensors; an entry that
is unreadable or fails that check is deleted (with a one-line notice) and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.cache import cache_dir
from lowrank.models.architectures import compressible_linears
from lowrank.progress import notice


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
    key = json.dumps(
        {
            "model": loaded.name,
            "weights": weights_fingerprint(loaded.model),
            "task": task.name,
            "task_source": task.source,
            "task_data": task.content_hash(),
            **settings,
        },
        sort_keys=True,
    )
    return cache_dir() / kind / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors stored at ``path``; ``None`` when there is no entry, or when the entry is unreadable
    or fails its checksum (it is then deleted with a one-line notice, so the caller recomputes it)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        problem = f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    else:
        if recorded is not None and recorded == tensors_digest(tensors):
            return tensors
        problem = "no checksum" if recorded is None else "checksum mismatch"
    path.unlink(missing_ok=True)
    notice(f"cache entry {path} cannot be trusted ({problem}); recomputing it")
    return None


def recorded_digest(path: Path) -> str | None:
    """The SHA-256 of the tensors an entry records in its header (read without its tensors): an identity of its
    content for keys derived from it; ``None`` when there is no entry or it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def write(path: Path, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Store ``tensors`` at ``path`` atomically, with ``settings`` and the tensors' checksum as metadata."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in settings.items()} | {"sha256": tensors_digest(tensors)}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
