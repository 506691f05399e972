"""The arithmetic of healing's training steps: ``float32``, or ``bfloat16`` mixed precision.

``bfloat16``: the forward passes of a training step (the dense model's targets and the compressed model's forward,
so its backward too) run under ``torch.autocast`` in bfloat16 on the models' device; the matrix products round
their inputs to 8 significant bits (relative error at most ``2^-9`` per element) and accumulate in float32. The
trained parameters, their gradients, AdamW's moments and the loss (the logits cast to float32 first,
:mod:`lowrank.healing.loss`) stay float32: the usual mixed-precision recipe. Held-out measurements always run in
float32, so the kept checkpoint is chosen, and the held-out KL reported, at full precision. It can pay only where
the hardware multiplies bfloat16 faster than float32 (CPUs with AMX or AVX512-BF16, recent GPUs); the default is
``float32`` (docs/results/decoder.md, "Healing in bfloat16, and the best rows healed again").
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # name -> autocast dtype (None: no autocast)


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`; else a one-line ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"healing precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def training_precision(precision: str, device: str | torch.device):
    """The context a training step's forward passes run in: ``torch.autocast`` on ``device``'s type at
    ``precision``'s dtype, or nothing for ``float32``."""
    dtype = PRECISIONS[check_precision(precision)]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)
