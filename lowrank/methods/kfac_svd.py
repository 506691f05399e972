"""K-FAC-weighted SVD (ours, following the Kronecker-factored Fisher of K-FAC; GFWSVD uses the same idea).

With the Fisher of ``W`` (out, in) approximated as ``G (x) A``, ``A = E[x x^T]`` (in, in), ``G = E[g g^T]``
(out, out) (:mod:`lowrank.statistics.moments`), the second-order loss change is minimized at rank ``r``::

    min_{rank r W'} 0.5 tr(G (W - W') A (W - W')^T) = 0.5 ||L_G^T (W - W') L_A||_F^2

with ``A = L_A L_A^T``, ``G = L_G L_G^T``, exactly by ``W' = L_G^-T SVD_r(L_G^T W L_A) L_A^-1`` (with symmetric
roots, ``G^-1/2 SVD_r(G^1/2 W A^1/2) A^-1/2``); with ``G = I`` it is SVD-LLM. Roots from
:func:`lowrank.methods.roots.psd_root` (regularizers in ``info``). Cost: two roots O(in^3 + out^3), one thin SVD.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, register_method
from lowrank.methods.roots import Root, psd_root
from lowrank.methods.svd_llm import whitened_factors


def kfac_roots(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor, inverse: bool = True) -> tuple[Root, Root]:
    """``(L_A, L_G)`` with ``A = L_A L_A^T`` (in, in) and ``G = L_G L_G^T`` (out, out), checked against ``W``;
    their inverses only with ``inverse``."""
    if A.shape != (W.shape[1], W.shape[1]) or G.shape != (W.shape[0], W.shape[0]):
        raise ValueError(
            f"moments of shapes {tuple(G.shape)} and {tuple(A.shape)} do not fit a weight {tuple(W.shape)}"
        )
    return psd_root(A.to(W.device), inverse), psd_root(G.to(W.device), inverse)


def kfac_whitened(W: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The matrix K-FAC-SVD truncates: ``L_G^T W L_A`` (float64); the roots without their inverses."""
    right, left = kfac_roots(W, stats["input_moment"], stats["grad_moment"], inverse=False)
    return left.L.T @ W.double() @ right.L


def kfac_factors(W: torch.Tensor, rank: int, A: torch.Tensor, G: torch.Tensor) -> Factorization:
    """The exact minimizer of ``tr(G dW A dW^T)`` at rank ``rank``; see the module docstring."""
    right, left = kfac_roots(W, A, G)
    U, V = whitened_factors(W, rank, left.L.T, left.L_inv.T, right.L, right.L_inv)
    info = {"regularizer": right.regularizer, "grad_regularizer": left.regularizer}
    return Factorization(U.to(W.dtype), V.to(W.dtype), info=info)


@register_method(
    "kfac_svd",
    "K-FAC-weighted SVD (ours): exact minimizer of the Kronecker-factored Fisher loss "
    "0.5 tr(G dW A dW^T), A = E[x x^T], G = E[g g^T].",
    needs=("activations", "gradients"),
    target=kfac_whitened,
)
def kfac_svd(W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor]) -> Factorization:
    return kfac_factors(W, rank, stats["input_moment"], stats["grad_moment"])
