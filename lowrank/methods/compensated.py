"""Error-compensated factorization: fit the layer's dense outputs from the inputs it gets in the compressed model.

With ``X`` (in, T) the layer's inputs in the dense model and ``X_hat`` (in, T) its inputs, on the same tokens, in
the model compressed so far, the objective is::

    min_{rank r B} ||W X - B X_hat||_F^2 = const - 2 <B L, W M L^-T> + ||B L||_F^2

with the cross moment ``M = E[x x_hat^T]`` (in, in) and ``C = E[x_hat x_hat^T] = L L^T`` (in, in); it is minimized
exactly by ``B L = SVD_r(W M L^-T)``, i.e. ``B = SVD_r(W M L^-T) L^-1``. With ``X_hat = X`` (``M = C``),
``W M L^-T = W L`` and this is SVD-LLM; at full rank it is the least-squares solution ``W M C^-1``.
Under an output-gradient metric ``G = E[g g^T] = L_G L_G^T`` (out, out), the objective
``tr(G (W X - B X_hat)(W X - B X_hat)^T) = ||L_G^T W X - L_G^T B X_hat||_F^2`` is the same problem for
``L_G^T B``, so ``B = L_G^-T SVD_r(L_G^T W M L^-T) L^-1`` (the K-FAC variant; with ``G = I`` the plain one).
Roots from :func:`lowrank.methods.roots.psd_root` (regularizers in ``info``). Cost: one root O(in^3) (two with
``G``, + O(out^3)), the product ``W M`` O(out in^2) and one thin SVD.
"""

from __future__ import annotations

import torch

from lowrank.methods.registry import Factorization
from lowrank.methods.roots import psd_root
from lowrank.methods.svd_llm import whitened_factors


def compensated_factors(
    W: torch.Tensor, rank: int, cross: torch.Tensor, moment: torch.Tensor, grad: torch.Tensor | None = None
) -> Factorization:
    """``B = U V`` minimizing ``||W X - B X_hat||_F^2`` (``tr(G ...)`` with ``grad``) at rank ``rank``.

    ``cross``: ``M = E[x x_hat^T]`` (in, in); ``moment``: ``C = E[x_hat x_hat^T]`` (in, in); ``grad``:
    ``G`` (out, out) or None. Factors in ``W``'s dtype; see the module docstring.
    """
    out_features, in_features = W.shape
    if cross.shape != (in_features, in_features) or moment.shape != (in_features, in_features):
        raise ValueError(
            f"moments of shapes {tuple(cross.shape)} and {tuple(moment.shape)} do not fit a weight {tuple(W.shape)}"
        )
    if grad is not None and grad.shape != (out_features, out_features):
        raise ValueError(f"grad_moment has shape {tuple(grad.shape)}, expected {(out_features, out_features)}")
    root = psd_root(moment.to(W.device))
    info = {"regularizer": root.regularizer}
    if grad is None:
        left = left_inv = torch.eye(out_features, dtype=torch.float64, device=W.device)
    else:
        grad_root = psd_root(grad.to(W.device))
        left, left_inv = grad_root.L.T, grad_root.L_inv.T
        info["grad_regularizer"] = grad_root.regularizer
    target = W.double() @ cross.to(W.device).double()
    U, V = whitened_factors(target, rank, left, left_inv, root.L_inv.T, root.L_inv)
    return Factorization(U.to(W.dtype), V.to(W.dtype), info=info)
