"""Per-layer predicted loss curves: ``curve[r]``, the loss increase of truncating a layer to rank ``r``.

FWSVD (:func:`predicted_loss_curve`): the Fisher as a diagonal Hessian, ``F_ij`` replaced by its mean over
the rows, ``d_j^2 = mean_i F_ij`` (one scale for layers of different heights), gives
``0.5 ||(W - W') diag(d)||^2``, minimized by the truncated SVD of ``W diag(d)``: ``curve[r] = 0.5 sum_{k>r} s_k^2``
of ``W diag(d)``. K-FAC (:func:`kfac_loss_curve`): ``0.5 tr(G dW A dW^T) = 0.5 ||L_G^T dW L_A||_F^2``, minimized
by ``kfac_svd``: ``curve[r] = 0.5 sum_{k>r} s_k^2`` of ``L_G^T W L_A``, keeping the correlations of a layer's
inputs and output gradients. Cost: one set of singular values per layer (K-FAC: two roots, O(in^3 + out^3),
besides). Details: docs/methods.md#rank-allocation-lowrankallocation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lowrank.loaded import module_of
from lowrank.methods.kfac_svd import kfac_whitened
from lowrank.methods.registry import gram_singular_values
from lowrank.models.architectures import compressible_linears
from lowrank.progress import Progress, report


def predicted_loss_curve(W: torch.Tensor, F: torch.Tensor | None = None, axis: str = "in") -> np.ndarray:
    """``curve[r]`` (r = 0 .. min(out, in)): predicted loss increase of the best rank-r FWSVD truncation.

    ``curve[r] = 0.5 * sum_{k > r} s_k^2`` with ``s`` the singular values of ``W diag(d)``,
    ``d_j = sqrt(mean_i F_ij)`` (``axis="in"``, one weight per input feature) or of
    ``diag(d) W`` with ``d_i = sqrt(mean_j F_ij)`` (``axis="out"``). ``F=None`` means ``F = 1``.
    Non-increasing, ``curve[min(out, in)] = 0``. Cost: singular values of one matrix.
    """
    if axis not in ("in", "out"):
        raise ValueError(f"axis must be 'in' or 'out', got {axis!r}")
    W = torch.as_tensor(W).detach().float().cpu()
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    if F is None:
        scaled = W
    else:
        F = torch.as_tensor(F).detach().float().cpu()
        if F.shape != W.shape:
            raise ValueError(f"importance shape {tuple(F.shape)} does not match weight shape {tuple(W.shape)}")
        if not torch.isfinite(F).all() or (F < 0).any():
            raise ValueError("importance must be finite and non-negative")
        scaled = W * F.mean(0).sqrt()[None, :] if axis == "in" else F.mean(1).sqrt()[:, None] * W
    return _tail_curve(torch.linalg.svdvals(scaled))


def kfac_loss_curve(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor) -> np.ndarray:
    """``curve[r]`` (r = 0 .. min(out, in)): K-FAC-predicted loss increase of the best rank-r truncation.

    ``curve[r] = 0.5 * sum_{k > r} s_k^2``, ``s`` the singular values of ``L_G^T W L_A`` with the
    safeguarded roots of ``A = E[x x^T]`` (in, in) and ``G = E[g g^T]`` (out, out)
    (:func:`lowrank.methods.kfac_svd.kfac_whitened`); the value ``kfac_svd`` attains at rank r. Non-increasing,
    ``curve[min(out, in)] = 0``. Cost: two roots O(in^3 + out^3) and the singular values of one matrix
    (:func:`lowrank.methods.registry.gram_singular_values`).
    """
    W = torch.as_tensor(W).detach()
    return _tail_curve(gram_singular_values(kfac_whitened(W, {"input_moment": A, "grad_moment": G})))


def _tail_curve(s: torch.Tensor) -> np.ndarray:
    """``0.5 * [sum_{k >= r} s_k^2 for r = 0 .. len(s)]`` (0-based), ending at 0."""
    s2 = s.detach().double().cpu().numpy() ** 2
    tail = np.cumsum(s2[::-1])[::-1]  # tail[k] = sum_{j >= k} s_j^2 (0-based)
    return 0.5 * np.append(tail, 0.0)


def layer_loss_curves(
    model, importance: dict[str, torch.Tensor], axis: str = "in", progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """``{name: curve}`` for every compressible layer that has an importance tensor (see :func:`predicted_loss_curve`).

    ``curve[r]`` prices any rank without refactorizing.
    """
    module = module_of(model)
    linears = {n: m for n, m in compressible_linears(module).items() if n in importance}
    curves = {}
    for step, (name, layer) in enumerate(linears.items()):
        report(progress, step, len(linears), f"loss curve of {name}")
        curves[name] = predicted_loss_curve(layer.weight, importance[name], axis)
    report(progress, len(linears), len(linears), "loss curves done")
    return curves


def kfac_loss_curves(model, stats: dict[str, dict], progress: Progress | None = None) -> dict[str, np.ndarray]:
    """``{name: curve}`` (:func:`kfac_loss_curve`) for every compressible layer; ``stats[name]`` holds its
    ``input_moment`` and ``grad_moment`` (:func:`lowrank.statistics.statistics_for` with activations and gradients)."""
    linears = compressible_linears(module_of(model))
    missing = [n for n in linears if not {"input_moment", "grad_moment"} <= set(stats.get(n, {}))]
    if missing:
        raise ValueError(
            f"K-FAC loss curves need the input and gradient moments of every layer (statistics "
            f"'activations' and 'gradients'); missing for {len(missing)}: {missing[:3]}"
        )
    curves = {}
    for step, (name, layer) in enumerate(linears.items()):
        report(progress, step, len(linears), f"K-FAC loss curve of {name}")
        curves[name] = kfac_loss_curve(layer.weight, stats[name]["input_moment"], stats[name]["grad_moment"])
    report(progress, len(linears), len(linears), "K-FAC loss curves done")
    return curves


def loss_at(curves: dict[str, np.ndarray] | None, name: str, rank: int | None) -> float:
    """Predicted loss increase of layer ``name`` at ``rank``: ``curves[name][rank]``, 0 for a dense
    layer (``rank`` None), NaN when the layer has no curve."""
    if curves is None or name not in curves:
        return math.nan
    return 0.0 if rank is None else float(curves[name][rank])
