"""SVD-LLM (Wang et al., ICLR 2025): truncation-aware data whitening.

Objective: the reconstruction error of the layer's outputs on the calibration inputs ``X``::

    min_{rank r W'} ||(W - W') X||_F^2 = tr((W - W') A (W - W')^T),    A = E[x x^T] (in, in)

With ``A = L L^T`` this is ``||(W - W') L||_F^2``, minimized exactly by
``W' L = SVD_r(W L)``, i.e. ``W' = U_r S_r V_r^T L^-1``; the factors are
``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T L^-1``. ``L`` comes from a safeguarded Cholesky
(:func:`lowrank.methods.roots.psd_root`: jitter, then clipped eigenvalues); the regularizer
used is recorded in ``info["regularizer"]``. Cost: a Cholesky O(in^3) and one thin SVD.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, register_method
from lowrank.methods.roots import Root, psd_root
from lowrank.methods.svd import truncated_svd


def whitened_factors(
    W: torch.Tensor, rank: int, left: torch.Tensor, left_inv: torch.Tensor, right: torch.Tensor, right_inv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``U V = left_inv SVD_r(left W right) right_inv`` (float64)."""
    U, V = truncated_svd(left @ W.double() @ right, rank)
    return left_inv @ U, V @ right_inv


def input_root(W: torch.Tensor, stats: Mapping[str, torch.Tensor], inverse: bool = True) -> Root:
    """``L`` with ``A = E[x x^T] = L L^T`` (in, in), checked against ``W``'s input size; ``L^-1`` with ``inverse``."""
    A = stats["input_moment"].to(W.device)
    if A.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"input_moment has shape {tuple(A.shape)}, expected {(W.shape[1], W.shape[1])}")
    return psd_root(A, inverse)


def whitened(W: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The matrix SVD-LLM truncates: ``W L`` (float64); the root without its inverse."""
    return W.double() @ input_root(W, stats, inverse=False).L


@register_method(
    "svd_llm",
    "SVD-LLM (Wang et al. 2025): SVD of W L with A = E[x x^T] = L L^T (data whitening), "
    "exact for the output reconstruction error.",
    needs=("activations",),
    target=whitened,
)
def svd_llm(W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor]) -> Factorization:
    root = input_root(W, stats)
    eye = torch.eye(W.shape[0], dtype=torch.float64, device=W.device)
    U, V = whitened_factors(W, rank, eye, eye, root.L, root.L_inv)
    return Factorization(U.to(W.dtype), V.to(W.dtype), info={"regularizer": root.regularizer})
