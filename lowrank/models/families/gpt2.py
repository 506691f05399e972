"""GPT-2: fused query/key/value and a GELU MLP, its projections stored as ``Conv1D``.

Per block, hidden width d, each projection ``y = x W + b`` with ``W`` (in, out)::

    q, k, v = split(attn.c_attn(norm(x)))           # W (d, 3d)
    h = x + attn.c_proj(attention(q, k, v))         # W (d, d)
    y = h + mlp.c_proj(gelu(mlp.c_fc(norm(h))))     # W (d, 4d), then (4d, d)

The layout hook :func:`conv1d_to_linear` replaces each ``Conv1D`` by the ``nn.Linear`` with weight
``W^T`` (out, in) and the same bias (as nanoGPT's ``from_pretrained`` transposes them): exact, in
place, idempotent, one copy of each weight. Four compressible Linears per block, 12 d^2 weights.
No decoder layout: GPT-2 adds learned positions (``transformer.wpe``), not rotary ones.
"""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lowrank.models.families.registry import Family, register_family


def conv1d_to_linear(model: nn.Module) -> None:
    """Replace every ``Conv1D`` (``y = x W + b`` with ``W`` (in, out)) by the equivalent ``nn.Linear``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
            linear = nn.Linear(in_features, out_features, device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)


GPT2 = register_family(
    Family(
        "gpt2",
        ("gpt2",),
        (
            ("attn.c_attn", "qkv"),
            ("attn.c_proj", "attn_out"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        ),
        layout=conv1d_to_linear,
    )
)
