"""Sparsity-aware SVD (LPAF, Ren & Zhu 2023): reconstruct a pruned matrix's kept entries, not its zeros.

For a pruned ``W`` (out, in), mask ``M`` (1 = kept) and optional importance ``S >= 0`` (movement scores are
signed: pass a non-negative transform), pass ``importance = M * S`` (just ``M`` for unweighted) and solve::

    min_{U, V}  sum_ij M_ij S_ij (W - U V)_ij^2

with an element-wise solver of :mod:`lowrank.methods.solvers` (default ALS) from the truncated SVD of ``W * M``.
``M = importance > 0``; pruned entries get the solver's floor (1e-6 of the largest importance), which keeps every
ALS system well posed. Reconstruction: the paper's exact algorithm is not available here; this is the
weighted-least-squares reading of "reconstruct the kept entries".
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.solvers import SOLVERS, check_solver_options, optimize
from lowrank.methods.svd import truncated_svd


@register_method(
    "sparsity_aware",
    "Sparsity-aware SVD (LPAF): fit only the kept entries of a pruned matrix "
    "(importance = mask x scores), element-wise solver started from SVD of the pruned matrix.",
    needs=("mask",),
    options={
        "solver": Option("als", tuple(SOLVERS), "element-wise solver"),
        "max_iters": Option(None, help="iteration cap (default per solver)"),
    },
    open_options=True,
    validate=lambda options: check_solver_options(**options),
)
def sparsity_aware(
    W: torch.Tensor, rank: int, stats: Mapping[str, torch.Tensor], solver: str = "als", **options
) -> Factorization:
    importance = stats["mask"]
    pruned = W * (importance > 0)
    U, V = truncated_svd(pruned.to(torch.float64 if W.dtype == torch.float64 else torch.float32), rank)
    result = optimize(pruned, importance, U, V, solver=solver, **options)
    result.info.update(init="svd of the pruned matrix", kept=float((importance > 0).float().mean()))
    return result
