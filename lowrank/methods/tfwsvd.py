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

from collections.abc import Mapping

import torch

from lowrank.methods.fwsvd import AXES, fwsvd_factors
from lowrank.methods.kfac_svd import kfac_factors
from lowrank.methods.registry import Factorization, Option, register_method, weighted_error
from lowrank.methods.solvers import SOLVERS, check_solver_options, optimize, work_dtype

INIT_AXES = ("best",) + AXES + ("kfac",)  # the start: the closed form with the lowest E, or a fixed one


def fwsvd_start(
    W: torch.Tensor,
    rank: int,
    importance: torch.Tensor,
    axis: str = "best",
    stats: Mapping[str, torch.Tensor] | None = None,
) -> Factorization:
    """Closed-form start for the element-wise solvers: ``axis="in"``/``"out"`` (FWSVD), ``"kfac"``
    (:func:`~lowrank.methods.kfac_svd.kfac_factors`, needs the moments in ``stats``), or ``"best"``:
    every available closed form, keeping the one with the lowest element-wise error ``E`` (the
    K-FAC candidate joins when ``stats`` holds ``input_moment`` and ``grad_moment``)."""
    if axis not in INIT_AXES:
        raise ValueError(f"init_axis must be one of {INIT_AXES}, got {axis!r}")
    has_moments = stats is not None and "input_moment" in stats and "grad_moment" in stats
    if axis == "kfac" and not has_moments:
        raise ValueError(
            "init_axis='kfac' needs input_moment and grad_moment statistics (kinds activations, gradients)"
        )
    candidates = {a: (lambda a=a: fwsvd_factors(W, rank, importance, axis=a)) for a in AXES}
    if has_moments:
        candidates["kfac"] = lambda: kfac_factors(W, rank, stats["input_moment"], stats["grad_moment"])
    if axis != "best":
        return _labelled(candidates[axis](), axis)
    X, F = W.to(work_dtype(W)), importance.to(work_dtype(W))
    starts = [_labelled(make(), name) for name, make in candidates.items()]
    return min(starts, key=lambda c: weighted_error(X, c.U.to(X.dtype), c.V.to(X.dtype), F))


def _labelled(start: Factorization, name: str) -> Factorization:
    start.info["start"] = "kfac_svd" if name == "kfac" else f"fwsvd[{name}]"
    return start


@register_method(
    "tfwsvd",
    "Element-wise Fisher-weighted factorization (Hua et al. 2022), started from FWSVD; "
    "solver='als' (default), 'em', 'adam' or 'adam_sgd'.",
    needs=("fisher",),
    options={
        "solver": Option("als", tuple(SOLVERS), "element-wise solver"),
        "init_axis": Option("best", INIT_AXES, "closed-form start (best: lowest weighted error)"),
        "max_iters": Option(None, help="iteration cap (default per solver)"),
        "tol": Option(1e-4, help="stop below this relative improvement"),
    },
    open_options=True,
    validate=lambda options: check_solver_options(**{k: v for k, v in options.items() if k != "init_axis"}),
)
def tfwsvd(
    W: torch.Tensor,
    rank: int,
    stats: Mapping[str, torch.Tensor],
    solver: str = "als",
    init_axis: str = "best",
    **options,
) -> Factorization:
    """Closed-form start (:func:`fwsvd_start`), then :func:`~lowrank.methods.solvers.optimize` with the
    element-wise Fisher; solver-specific options (``ridge``, ``cg_steps``, ``lr``...) are checked there."""
    importance = stats["fisher"]
    start = fwsvd_start(W, rank, importance, init_axis, stats)
    result = optimize(W, importance, start.U, start.V, solver=solver, **options)
    result.info["init"] = start.info["start"]
    return result
