"""ASVD (Yuan et al. 2023): activation-aware SVD with per-input-feature scaling.

With ``m_j = E|x_j|`` the mean absolute input of feature ``j`` and ``S = diag(m)^alpha``::

    W ~ SVD_r(W S) S^-1

i.e. ``U V`` with ``(U, V S)`` the truncated SVD of ``W S``: the rank-r approximation that is
best for the reconstruction of ``W x`` when feature ``j`` has magnitude ``m_j^alpha`` (exact
for ``min ||(W - W') S||_F``). ``alpha = 0.5`` by default (ASVD's choice; a reconstruction of
its details, the paper's full text is not available here). Features that never fire are
floored at ``floor * max m``. Cost: one thin SVD.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.solvers import work_dtype
from lowrank.methods.svd import truncated_svd


def activation_scales(W: torch.Tensor, stats: Mapping[str, torch.Tensor], alpha: float, floor: float) -> torch.Tensor:
    """``S = diag(m)^alpha`` as a vector (in,), ``m = E|x|`` floored at ``floor * max m``."""
    dtype = work_dtype(W)
    m = stats["input_abs_mean"].to(W.device, dtype)
    if m.shape != (W.shape[1],):
        raise ValueError(f"input_abs_mean has shape {tuple(m.shape)}, expected ({W.shape[1]},)")
    return m.clamp(min=max(float(m.max()) * floor, torch.finfo(dtype).tiny)) ** alpha


def activation_scaled(
    W: torch.Tensor, stats: Mapping[str, torch.Tensor], alpha: float = 0.5, floor: float = 1e-6
) -> torch.Tensor:
    """The matrix ASVD truncates: ``W S``."""
    return W.to(work_dtype(W)) * activation_scales(W, stats, alpha, floor)


@register_method(
    "asvd",
    "Activation-aware SVD (Yuan et al. 2023): SVD of W diag(E|x|)^alpha, scaled back.",
    needs=("activations",),
    options={
        "alpha": Option(0.5, help="exponent of the mean absolute input"),
        "floor": Option(1e-6, help="floor of the scales, relative to the largest"),
    },
    target=activation_scaled,
)
def asvd(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], alpha: float = 0.5, floor: float = 1e-6
) -> Factorization:
    dtype = work_dtype(W)
    s = activation_scales(W, stats, alpha, floor)
    U, V = truncated_svd(W.to(dtype) * s, rank)
    return Factorization(U.to(W.dtype), (V / s).to(W.dtype), info={"alpha": alpha})
