"""TFWSVD (Hua et al. 2022): element-wise Fisher-weighted factorization.

Objective, for ``W`` (out, in), importance ``F >= 0`` (out, in), ``U`` (out, r), ``V`` (r, in)::

    E(U, V) = sum_ij F_ij (W - U V)_ij^2

``tfwsvd`` (Hua et al. 2022) minimizes ``E`` with the full element-wise ``F`` by numerical
optimization started from ``fwsvd`` (by default the orientation with the lower ``E``; which
orientation wins on fine-tuned MiniLM is measured in docs/results/weighted.md).
The paper's text is not available here; the solvers (:mod:`lowrank.methods.solvers`) are
the standard ones it names, and their details are reconstructions.
"""

from __future__ import annotations

from typing import Mapping

import torch

from lowrank.methods.fwsvd import AXES, fwsvd_factors
from lowrank.methods.registry import Factorization, Option, register_method, weighted_error
from lowrank.methods.solvers import SOLVERS, optimize, work_dtype

INIT_AXES = ("best",) + AXES  # the start: the FWSVD orientation with the lower E, or a fixed one


def fwsvd_start(W: torch.Tensor, rank: int, importance: torch.Tensor, axis: str = "best") -> Factorization:
    """FWSVD start for the element-wise solvers: ``axis="in"``/``"out"``, or ``"best"``: both
    orientations, keeping the one with the lower element-wise error ``E`` (one extra SVD)."""
    if axis not in INIT_AXES:
        raise ValueError(f"init_axis must be one of {INIT_AXES}, got {axis!r}")
    if axis != "best":
        return fwsvd_factors(W, rank, importance, axis=axis)
    candidates = [fwsvd_factors(W, rank, importance, axis=a) for a in AXES]
    X, F = W.to(work_dtype(W)), importance.to(work_dtype(W))
    return min(candidates, key=lambda c: weighted_error(X, c.U.to(X.dtype), c.V.to(X.dtype), F))


@register_method("tfwsvd", "Element-wise Fisher-weighted factorization (Hua et al. 2022), started from FWSVD; "
                 "solver='als' (default), 'em', 'adam' or 'adam_sgd'.", needs=("fisher",),
                 options={"solver": Option("als", tuple(SOLVERS), "element-wise solver"),
                          "init_axis": Option("best", INIT_AXES, "FWSVD start orientation"),
                          "max_iters": Option(None, help="iteration cap (default per solver)"),
                          "tol": Option(1e-4, help="stop below this relative improvement")},
                 open_options=True)
def tfwsvd(W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], solver: str = "als",
           init_axis: str = "best", **options) -> Factorization:
    """FWSVD start (:func:`fwsvd_start`), then :func:`~lowrank.methods.solvers.optimize` with the
    element-wise Fisher; solver-specific options (``ridge``, ``cg_steps``, ``lr``...) are checked there."""
    importance = stats["fisher"]
    start = fwsvd_start(W, rank, importance, init_axis)
    result = optimize(W, importance, start.U, start.V, solver=solver, **options)
    result.info["init"] = f"fwsvd[{start.info['axis']}]"
    return result
