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

The correction is checked on calibration windows it was not fitted on (``validate``). The compensation statistics
keep the moments of two folds of the windows (window ``j`` in fold ``j mod 2``: ``M_k``, ``C_k`` over ``n_k``
tokens). A correction ``K = (M_f - C_f) C_f^-1`` fitted on folds ``f`` (the input error predicted from ``x_hat``)
has on a fold ``k`` it was not fitted on the error of ``x ~ (I + s K) x_hat``, a quadratic in ``s``::

    e_k(s) = E_k ||L_G^T W ((x - x_hat) - s K x_hat)||^2 = const - 2 s b_k + s^2 c_k,
    b_k = tr(Y (M_k^T - C_k) W^T L_G),   c_k = tr(Y C_k Y^T),   Y = L_G^T W K,   s* = clip(b / c, 0, 1)

* ``"two-fold"``: each fold checked against the correction fitted on the other (``b = sum_k n_k b_k``, likewise
  ``c``); the layer is fitted with ``M`` replaced by ``C + alpha s* (M - C)``, the correction of all windows;
* ``"held-out"``: the correction fitted on fold 0 only, checked on fold 1, and the layer fitted with ``M`` replaced
  by ``C + alpha s* K_0 C``; fold 1's windows inform no correction of any block, so the inputs they bring to a layer
  carry the earlier blocks' errors as new text would, which a two-fold check (every window fitted by an earlier
  block) does not see; the price is a correction fitted on half the windows;
* ``"none"``: ``C + alpha (M - C)`` as above.

``s* = 1`` keeps the correction, ``s* = 0`` drops it (the layer is then fitted to its own dense map on ``X_hat``).
Both checks are ours (a reconstruction): a cross-validation of the correction in the layer's own metric.

Blocks are compressed in order (:func:`lowrank.compress_in_blocks`, :func:`lowrank.compress_sequential`); within a block every layer sees the
block's inputs from the compressed blocks before it (the block itself still dense). Roots from
:func:`lowrank.methods.roots.psd_root` (regularizers in ``info``); a regularized root ``L L^T = C + D`` adds ``D``
to ``M`` too, i.e. the objective gains ``tr((W - B) D (W - B)^T)`` (a pull towards ``W`` where the data is silent),
so ``M = C`` gives SVD-LLM exactly, regularized or not. Cost: one root O(in^3) (two with ``G``,
+ O(out^3)), the product ``W M`` O(out in^2) and one thin SVD; validation one or two fitted corrections O(in^3)
and O(out in^2 + out^2 in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.roots import psd_root
from lowrank.methods.svd_llm import whitened_factors

# The methods' default: chosen on Lee (svd_llm, alpha 0 to 1) and checked on kfac_svd, both corpora and both budgets
# by benchmarks/decoder.py (docs/results/decoder.md, "partial compensation").
ALPHA = 0.25
# How a layer's correction is checked on calibration windows it was not fitted on (module docstring); the default
# chosen by benchmarks/decoder.py on both corpora and two calibration sizes (docs/results/decoder.md, "validated
# correction").
VALIDATIONS = ("none", "two-fold", "held-out")
VALIDATE = "held-out"
OPTIONS = {
    "alpha": Option(ALPHA, help="weight of the dense outputs in the target (0: none, 1: full compensation)"),
    "validate": Option(
        VALIDATE,
        choices=VALIDATIONS,
        help="check each layer's correction on calibration windows it was not fitted on and shrink it to what they "
        "support: two-fold (each half against the other) or held-out (half the windows fit no correction)",
    ),
}


def check_alpha(options: Mapping) -> None:
    """``alpha`` (when given) must lie in [0, 1]."""
    alpha = options.get("alpha", ALPHA)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


@dataclass
class Folds:
    """The compensation moments of each fold of the calibration windows: ``cross`` ``M_k`` (FOLDS, in, in),
    ``moment`` ``C_k`` (FOLDS, in, in), ``tokens`` ``n_k`` (FOLDS,)."""

    cross: torch.Tensor
    moment: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def of(cls, stats: Mapping[str, torch.Tensor]) -> Folds:
        return cls(stats["fold_cross_moment"], stats["fold_compressed_moment"], stats["fold_tokens"])


def fitted_correction(cross: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """``K = (M - C) (C + D)^-1`` (in, in), float64: the input error ``x - x_hat`` predicted from ``x_hat`` by
    least squares, ``C + D`` regularized as :func:`~lowrank.methods.roots.psd_root` regularizes it. Cost O(in^3)."""
    root = psd_root(moment)
    return (cross - moment) @ root.L_inv.T @ root.L_inv


def held_out_terms(weighted: torch.Tensor, correction: torch.Tensor, cross: torch.Tensor, moment: torch.Tensor):
    """``(b, c)`` of one held-out fold (moments ``cross``, ``moment``) for a ``correction`` fitted elsewhere: its
    error ``E ||L_G^T W ((x - x_hat) - s K x_hat)||^2 = const - 2 s b + s^2 c``; ``weighted = L_G^T W`` (out, in)."""
    Y = weighted @ correction  # L_G^T W K (out, in)
    return float(((Y @ (cross.T - moment)) * weighted).sum()), float(((Y @ moment) * Y).sum())


def validated_correction(
    W: torch.Tensor,
    left: torch.Tensor,
    cross: torch.Tensor,
    moment: torch.Tensor,
    regularized: torch.Tensor,
    folds: Folds,
    validate: str,
) -> tuple[torch.Tensor, float | None]:
    """The correction's term ``T`` of the fitted cross moment ``C + D + alpha T`` (in, in), and ``s*`` (module
    docstring); ``left = L_G^T`` (the identity for the plain form), ``regularized = C + D`` (the root's regularizer ``D``):

    * ``"two-fold"``: ``T = s* (M - C)``, ``s*`` from each fold checked against the correction fitted on the other;
    * ``"held-out"``: ``T = s* K_0 (C + D)``, ``K_0`` fitted on fold 0 only, ``s*`` checked on fold 1, whose
      windows then inform no correction of any block.

    ``s*`` is ``None`` (and ``T = M - C``, unvalidated) when a fold holds no tokens. Cost: one or two corrections
    O(in^3) and O(out in^2 + out^2 in)."""
    tokens = folds.tokens.to(W.device).double()
    if not bool((tokens > 0).all()):
        return cross - moment, None
    fold_cross, fold_moment = folds.cross.to(W.device).double(), folds.moment.to(W.device).double()
    weighted = left @ W.double()  # L_G^T W (out, in)
    if validate == "held-out":
        correction = fitted_correction(fold_cross[0], fold_moment[0])
        multiplier = _clip(*held_out_terms(weighted, correction, fold_cross[1], fold_moment[1]))
        return multiplier * correction @ regularized, multiplier
    b = c = 0.0
    for k in range(len(tokens)):
        rest = torch.arange(len(tokens), device=W.device) != k
        share = (tokens[rest] / tokens[rest].sum())[:, None, None]
        correction = fitted_correction((fold_cross[rest] * share).sum(0), (fold_moment[rest] * share).sum(0))
        b_k, c_k = held_out_terms(weighted, correction, fold_cross[k], fold_moment[k])
        b, c = b + float(tokens[k]) * b_k, c + float(tokens[k]) * c_k
    multiplier = _clip(b, c)
    return multiplier * (cross - moment), multiplier


def _clip(b: float, c: float) -> float:
    """The minimizer of ``-2 s b + s^2 c`` over [0, 1] (1 where the correction is zero, ``c = 0``)."""
    return 1.0 if not c > 0 else min(max(b / c, 0.0), 1.0)


def compensated_factors(
    W: torch.Tensor,
    rank: int,
    cross: torch.Tensor,
    moment: torch.Tensor,
    grad: torch.Tensor | None = None,
    alpha: float = 1.0,
    folds: Folds | None = None,
    validate: str = "none",
) -> Factorization:
    """``B = U V`` minimizing ``(1 - alpha) ||W X_hat - B X_hat||_F^2 + alpha ||W X - B X_hat||_F^2``
    (``tr(G ...)`` with ``grad``) at rank ``rank``; with ``validate`` other than ``"none"``, ``X`` as the correction
    validated on ``folds`` predicts it (:func:`validated_correction`; ``info["correction_multiplier"]``: ``s*``, or
    ``"unvalidated"`` when a fold is empty).

    ``cross``: ``M = E[x x_hat^T]`` (in, in); ``moment``: ``C = E[x_hat x_hat^T]`` (in, in); ``grad``:
    ``G`` (out, out) or None; ``alpha`` in [0, 1]. Factors in ``W``'s dtype; see the module docstring.
    """
    check_alpha({"alpha": alpha})
    if validate not in VALIDATIONS:
        raise ValueError(f"validate must be one of {', '.join(VALIDATIONS)}, got {validate!r}")
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
    moment, cross = moment.to(W.device).double(), cross.to(W.device).double()
    regularized = root.L @ root.L.T
    if validate == "none":
        correction = cross - moment
    elif folds is None:
        raise ValueError(f"validate={validate!r} needs the fold moments of the compensation statistics")
    else:
        correction, multiplier = validated_correction(W, left, cross, moment, regularized, folds, validate)
        info["correction_multiplier"] = "unvalidated" if multiplier is None else multiplier
    cross = moment + alpha * correction + (regularized - 0.5 * (moment + moment.T))
    target = W.double() @ cross
    U, V = whitened_factors(target, rank, left, left_inv, root.L_inv.T, root.L_inv)
    return Factorization(U.to(W.dtype), V.to(W.dtype), info=info)


def factors_from_statistics(
    W: torch.Tensor,
    rank: int,
    stats: Mapping[str, torch.Tensor],
    grad: torch.Tensor | None,
    alpha: float,
    validate: str,
) -> Factorization:
    """:func:`compensated_factors` on the ``compensation`` statistics (their fold moments when ``validate`` checks)."""
    folds = None if validate == "none" else Folds.of(stats)
    return compensated_factors(
        W, rank, stats["cross_moment"], stats["compressed_moment"], grad, alpha=alpha, folds=folds, validate=validate
    )


@register_method(
    "svd_llm_compensated",
    "Error-compensated SVD-LLM: exact minimizer of (1 - alpha) ||W X_hat - B X_hat||_F^2 + alpha ||W X - B X_hat||_F^2, "
    "X the dense inputs, X_hat those of the model compressed so far (block by block).",
    needs=("compensation",),
    options=OPTIONS,
    validate=check_alpha,
)
def svd_llm_compensated(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], alpha: float = ALPHA, validate: str = VALIDATE
) -> Factorization:
    return factors_from_statistics(W, rank, stats, None, alpha, validate)


@register_method(
    "kfac_svd_compensated",
    "Error-compensated K-FAC SVD (ours): svd_llm_compensated's objective with the errors weighted by "
    "G = E[g g^T] = L_G L_G^T of the dense model (||L_G^T (...)||_F^2).",
    needs=("compensation", "gradients"),
    options=OPTIONS,
    validate=check_alpha,
)
def kfac_svd_compensated(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], alpha: float = ALPHA, validate: str = VALIDATE
) -> Factorization:
    return factors_from_statistics(W, rank, stats, stats["grad_moment"], alpha, validate)
