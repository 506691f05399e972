"""Size: parameters counted and the safetensors file measured, never estimated.

``parameter_counts`` gives all parameters and those in compressible weights: ``out * in`` for a dense
Linear, ``r * (out + in)`` for a ``LowRankLinear`` ``U`` (out, r) ``V`` (r, in). ``safetensors_size``
writes the model to a temporary folder and reads back the file's bytes. Cost: one write of the model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model

from lowrank.layers import LowRankLinear
from lowrank.models.architectures import compressible_linears


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters in compressible dense Linear + LowRankLinear weights)."""
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in compressible_linears(model).values())
    linear += sum(m.U.numel() + m.V.numel() for m in model.modules() if isinstance(m, LowRankLinear))
    return total, linear


def safetensors_size(model: torch.nn.Module) -> int:
    """Bytes of the model's safetensors file, measured by writing it to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size
