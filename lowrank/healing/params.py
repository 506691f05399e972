"""What healing trains: every ``LowRankLinear``'s factors ``U`` (out, r) and ``V`` (r, in), and optionally the norm
weights (LayerNorm, RMSNorm: any module whose class name ends in ``Norm``); nothing else. A snapshot of those
tensors is how the best checkpoint is kept and restored (memory: the factors and norms once more)."""

from __future__ import annotations

import torch
from torch import nn

from lowrank.layers import LowRankLinear


def is_norm(module: nn.Module) -> bool:
    return type(module).__name__.lower().endswith("norm")


def trainable(module: nn.Module, norms: bool) -> dict[str, nn.Parameter]:
    """The parameters healing trains in ``module``, by name (empty when it has no factors and ``norms`` is off)."""
    params: dict[str, nn.Parameter] = {}
    for name, child in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(child, LowRankLinear):
            params |= {f"{prefix}U": child.U, f"{prefix}V": child.V}
        elif norms and is_norm(child):
            params |= {f"{prefix}{key}": p for key, p in child.named_parameters(recurse=False)}
    return params


def check_factorized(module: nn.Module) -> None:
    """``ValueError`` unless ``module`` has a factorized layer (else there is nothing to heal)."""
    if not any(isinstance(m, LowRankLinear) for m in module.modules()):
        raise ValueError("nothing to heal: the model has no factorized (LowRankLinear) layer")


def train_only(module: nn.Module, params: dict[str, nn.Parameter]) -> None:
    """Freeze every parameter of ``module`` but ``params``."""
    module.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


def restore(params: dict[str, nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


def optimizer(params: dict[str, nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``params``; weight decay on matrices (the factors) only."""
    matrices = [p for p in params.values() if p.ndim >= 2]
    vectors = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
