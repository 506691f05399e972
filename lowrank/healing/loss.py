"""The distillation loss of healing: KL divergence from the dense model's output distribution, at a temperature.

Per position ``t`` (a token of a causal LM, an example of a classifier), with ``p = softmax(z_dense / T)`` and
``q = softmax(z / T)``: ``T^2 KL(p || q) = T^2 sum_v p_v (log p_v - log q_v)``, averaged over the real positions
(padding excluded). ``T = 1`` is the plain KL of the two output distributions; ``T > 1`` softens both, so the
ranking of the classes the dense model does not pick is fitted too, and ``T^2`` keeps the gradient's scale about
that of ``T = 1`` (Hinton et al. 2015). Computed in float32; memory a few copies of the logits (positions x
vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_sum(
    dense_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0
) -> tuple[torch.Tensor, int]:
    """``(sum of T^2 KL(p_dense || p) over the real positions, their count)``; logits (..., classes), mask (...)."""
    log_p = F.log_softmax(dense_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    per = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    if mask is None:
        return per.sum(), per.numel()
    mask = mask.to(per.device).bool()
    return per[mask].sum(), int(mask.sum())


def kl_mean(
    dense_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    total, count = kl_sum(dense_logits, logits, mask, temperature)
    return total / max(1, count)
