"""FWSVD (Hsu et al., ICLR 2022): Fisher-weighted SVD in closed form.

For ``E(U, V) = sum_ij F_ij (W - U V)_ij^2`` with importance ``F >= 0`` (out, in), ``F`` is replaced by one
weight per input column, ``d_j^2 = sum_i F_ij`` (``axis="in"``, the paper's choice), and solved exactly::

    min_{rank r} || (W - X) diag(d) ||_F^2   is solved by   X = SVD_r(W diag(d)) diag(d)^-1

``axis="out"``: one weight per output row, ``d_i^2 = sum_j F_ij``, ``X = diag(d)^-1 SVD_r(diag(d) W)``. Zero sums
are floored at ``floor * max d``. Cost: one thin SVD. Reconstruction: the orientation is our reading of the
paper's description (its full text is not available here), hence both are offered.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.solvers import FLOOR, work_dtype
from lowrank.methods.svd import truncated_svd

AXES = ("in", "out")


def fisher_scales(F: torch.Tensor, axis: str = "in", floor: float = FLOOR) -> torch.Tensor:
    """``d = sqrt(sum F)`` over rows (``axis="in"``: one weight per input column) or columns (per output row),
    floored at ``floor * max d``."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    d = F.sum(dim=0 if axis == "in" else 1).sqrt()
    return d.clamp(min=max(float(d.max()) * floor, torch.finfo(F.dtype).tiny))


def fisher_weighted(
    W: torch.Tensor, stats: Mapping[str, torch.Tensor], axis: str = "in", floor: float = FLOOR
) -> torch.Tensor:
    """The matrix FWSVD truncates: ``W diag(d)`` (``axis="in"``) or ``diag(d) W`` (``axis="out"``)."""
    dtype = work_dtype(W)
    d = fisher_scales(stats["fisher"].to(W.device, dtype), axis, floor)
    return W.to(dtype) * d if axis == "in" else d[:, None] * W.to(dtype)


def fwsvd_factors(W: torch.Tensor, rank: int, F: torch.Tensor, axis: str = "in", floor: float = FLOOR) -> Factorization:
    """Closed-form FWSVD of ``W`` with importance ``F`` (both (out, in)); see the module docstring."""
    dtype = work_dtype(W)
    X = W.to(dtype)
    d = fisher_scales(F.to(dtype), axis, floor)
    if axis == "in":
        U, V = truncated_svd(X * d, rank)
        V = V / d
    else:
        U, V = truncated_svd(d[:, None] * X, rank)
        U = U / d[:, None]
    return Factorization(U.to(W.dtype), V.to(W.dtype), info={"axis": axis})


@register_method(
    "fwsvd",
    "Fisher-weighted SVD (Hsu et al. 2022): closed form with Fisher summed per input feature "
    "(axis='in', default) or per output row (axis='out').",
    needs=("fisher",),
    options={
        "axis": Option("in", AXES, "which Fisher sums weight the SVD"),
        "floor": Option(FLOOR, help="floor of the weights, relative to the largest"),
    },
    target=fisher_weighted,
)
def fwsvd(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], axis: str = "in", floor: float = FLOOR
) -> Factorization:
    return fwsvd_factors(W, rank, stats["fisher"], axis, floor)
