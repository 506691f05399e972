"""Plain truncated SVD: the unweighted baseline every other method is measured against.

Objective ``min ||W - U V||_F^2`` over rank-r factors; optimal by Eckart-Young, with error
``sum_{i>r} s_i^2``. Cost: one thin SVD, O(out * in * min(out, in)).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, register_method


def truncated_svd(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r approximation in Frobenius norm (Eckart-Young), split as
    ``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T`` so both factors are balanced.

    Cost: one thin SVD, O(out * in * min(out, in)).
    """
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def weight(W: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The matrix plain SVD truncates: ``W`` itself."""
    return W


@register_method("svd", "Plain truncated SVD: optimal for unweighted Frobenius error.", target=weight)
def svd(W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor]) -> Factorization:
    U, V = truncated_svd(W, rank)
    return Factorization(U, V)
