"""The distillation loss of healing: KL divergence from the dense model's output distribution.

Per position ``t`` (a token of a causal LM, an example of a classifier), with ``p = softmax(z_dense)`` and
``q = softmax(z)``: ``KL(p || q) = sum_v p_v (log p_v - log q_v)``, averaged over the real positions (padding
excluded). Computed in float32; memory a few copies of the logits (positions x vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_sum(
    dense_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """``(sum of KL(p_dense || p) over the real positions, their count)``; logits (..., classes), mask (...)."""
    log_p = F.log_softmax(dense_logits.float(), dim=-1)
    log_q = F.log_softmax(logits.float(), dim=-1)
    per = (log_p.exp() * (log_p - log_q)).sum(-1)
    if mask is None:
        return per.sum(), per.numel()
    mask = mask.to(per.device).bool()
    return per[mask].sum(), int(mask.sum())


def kl_mean(dense_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    total, count = kl_sum(dense_logits, logits, mask)
    return total / max(1, count)
