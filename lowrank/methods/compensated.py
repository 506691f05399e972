"""Error-compensated factorization: fit the layer's dense outputs from the inputs it gets in the compressed model.

With ``X`` (in, T) the layer's inputs in the dense model and ``X_hat`` (in, T) its inputs, on the same tokens, in
the model compressed so far, the objective is::

    min_{rank r B} ||W X - B X_hat||_F^2 = const - 2 <B L, W M L^-T> + ||B L||_F^2

with the cross moment ``M = E[x x_hat^T]`` (in, in) and ``C = E[x_hat x_hat^T] = L L^T`` (in, in); it is minimized
exactly by ``B L = SVD_r(W M L^-T)``, i.e. ``B = SVD_r(W M L^-T) L^-1``. With ``X_hat = X`` (``M = C``),
``W M L^-T = W L`` and this is SVD-LLM; at full rank it is the least-squares solution ``W M C^-1``.

Partial compensation (``alpha`` in [0, 1], the form of SAES-SVD's cumulative-error objective; the weighting is a
reconstruction, ours)::

    min_{rank r B} (1 - alpha) ||W X_hat - B X_hat||_F^2 + alpha ||W X - B X_hat||_F^2

is the same problem with ``M`` replaced by ``M_alpha = (1 - alpha) C + alpha M``: ``alpha = 0`` fits the layer to
its own dense map on the inputs it will get (SVD-LLM on ``X_hat``, no compensation), ``alpha = 1`` to the dense
model's outputs (full compensation). The correction ``W (M - C)`` is a least-squares fit of the error the earlier
blocks made on the calibration tokens; ``alpha < 1`` shrinks it towards no correction.
Under an output-gradient metric ``G = E[g g^T] = L_G L_G^T`` (out, out), the objective
``tr(G (W X - B X_hat)(W X - B X_hat)^T) = ||L_G^T W X - L_G^T B X_hat||_F^2`` is the same problem for
``L_G^T B``, so ``B = L_G^-T SVD_r(L_G^T W M L^-T) L^-1`` (the K-FAC variant; with ``G = I`` the plain one).
``svd_llm_compensated`` is the plain form on the ``compensation`` statistics, which only the block sweep computes;
``kfac_svd_compensated`` the K-FAC form, ``G`` the dense model's output-gradient moment (``gradients``, taken by a
dense sweep before the compensated one). Minimizing ``||L_G^T (W X - B X_hat)||_F^2`` is a reconstruction (ours):
it weights the output error of each layer by the loss's curvature seen from the dense model; with ``X_hat = X`` it
is kfac_svd.
(:func:`lowrank.compress_in_blocks`, :func:`lowrank.compress_sequential`); within a block every layer sees the
block's inputs from the compressed blocks before it (the block itself still dense). Roots from
:func:`lowrank.methods.roots.psd_root` (regularizers in ``info``); a regularized root ``L L^T = C + D`` adds ``D``
to ``M`` too, i.e. the objective gains ``tr((W - B) D (W - B)^T)`` (a pull towards ``W`` where the data is silent),
so ``M = C`` gives SVD-LLM exactly, regularized or not. Cost: one root O(in^3) (two with ``G``,
+ O(out^3)), the product ``W M`` O(out in^2) and one thin SVD.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.roots import psd_root
from lowrank.methods.svd_llm import whitened_factors

# The methods' default: chosen on Lee (svd_llm, alpha 0 to 1) and checked on kfac_svd, both corpora and both budgets
# by benchmarks/decoder.py (docs/results/decoder.md, "partial compensation").
ALPHA = 0.25
OPTIONS = {"alpha": Option(ALPHA, help="weight of the dense outputs in the target (0: none, 1: full compensation)")}


def check_alpha(options: Mapping) -> None:
    """``alpha`` (when given) must lie in [0, 1]."""
    alpha = options.get("alpha", ALPHA)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def compensated_factors(
    W: torch.Tensor,
    rank: int,
    cross: torch.Tensor,
    moment: torch.Tensor,
    grad: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> Factorization:
    """``B = U V`` minimizing ``(1 - alpha) ||W X_hat - B X_hat||_F^2 + alpha ||W X - B X_hat||_F^2``
    (``tr(G ...)`` with ``grad``) at rank ``rank``.

    ``cross``: ``M = E[x x_hat^T]`` (in, in); ``moment``: ``C = E[x_hat x_hat^T]`` (in, in); ``grad``:
    ``G`` (out, out) or None; ``alpha`` in [0, 1]. Factors in ``W``'s dtype; see the module docstring.
    """
    check_alpha({"alpha": alpha})
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
    # the root's regularizer D = L L^T - C (jitter, clipped eigenvalues) enters M as well: the objective gains
    # tr((W - B) D (W - B)^T), a pull towards W where the data is silent, and M = C still gives svd_llm exactly
    moment = moment.to(W.device).double()
    cross = alpha * cross.to(W.device).double() + (1.0 - alpha) * moment
    cross = cross + (root.L @ root.L.T - 0.5 * (moment + moment.T))
    target = W.double() @ cross
    U, V = whitened_factors(target, rank, left, left_inv, root.L_inv.T, root.L_inv)
    return Factorization(U.to(W.dtype), V.to(W.dtype), info=info)


@register_method(
    "svd_llm_compensated",
    "Error-compensated SVD-LLM: exact minimizer of (1 - alpha) ||W X_hat - B X_hat||_F^2 + alpha ||W X - B X_hat||_F^2, "
    "X the dense inputs, X_hat those of the model compressed so far (block by block).",
    needs=("compensation",),
    options=OPTIONS,
    validate=check_alpha,
)
def svd_llm_compensated(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], alpha: float = ALPHA
) -> Factorization:
    return compensated_factors(W, rank, stats["cross_moment"], stats["compressed_moment"], alpha=alpha)


@register_method(
    "kfac_svd_compensated",
    "Error-compensated K-FAC SVD (ours): svd_llm_compensated's objective with the errors weighted by "
    "G = E[g g^T] = L_G L_G^T of the dense model (||L_G^T (...)||_F^2).",
    needs=("compensation", "gradients"),
    options=OPTIONS,
    validate=check_alpha,
)
def kfac_svd_compensated(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], alpha: float = ALPHA
) -> Factorization:
    return compensated_factors(
        W, rank, stats["cross_moment"], stats["compressed_moment"], stats["grad_moment"], alpha=alpha
    )
