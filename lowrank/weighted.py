"""Fisher-weighted low-rank factorization: FWSVD (closed form) and TFWSVD (element-wise).

Objective, for ``W`` (out, in), importance ``F >= 0`` (out, in), ``U`` (out, r), ``V`` (r, in)::

    E(U, V) = sum_ij F_ij (W - U V)_ij^2

``fwsvd`` (Hsu et al., ICLR 2022) replaces ``F`` by a rank-one pattern so the problem
has a closed form. The paper stores a Linear weight as (in x out) and gives every *input
feature* one importance, the sum of its Fisher row. In our (out, in) layout that is one
weight per column: ``d_j = sqrt(sum_i F_ij)``, and

    min_{rank r} || (W - X) diag(d) ||_F^2   is solved by   X = SVD_r(W diag(d)) diag(d)^-1,

exactly optimal for weights ``F_ij = d_j^2`` (``axis="in"``, the default and the paper's
choice). ``axis="out"`` gives one weight per output row instead: ``X = diag(d)^-1 SVD_r(diag(d) W)``.
Cost: one thin SVD.

``tfwsvd`` (Hua et al. 2022) minimizes ``E`` with the full element-wise ``F`` by numerical
optimization started from ``fwsvd`` (by default the orientation with the lower ``E``: on
fine-tuned MiniLM the per-output-row orientation usually wins, see benchmarks/weighted.py). The paper's text is not available here; the solvers
below are the standard ones it names, and their details are reconstructions:

* ``als``: alternating exact weighted least squares. With ``V`` fixed, row ``i`` of ``U``
  solves ``(V diag(F_i) V^T + lam I) u_i = V diag(F_i) w_i`` (an r x r system); all rows
  are solved in one batched ``torch.linalg.solve``. Then the columns of ``V`` likewise.
  Cost per iteration O(out * in * r^2); ``E`` never increases (an iteration that would
  raise it, possible only through the tiny ridge ``lam``, ends the run).
* ``em`` (Srebro & Jaakkola 2003): ``X <- SVD_r(Wn * W + (1 - Wn) * X)`` with
  ``Wn = F / max F`` in [0, 1]: each step fills the low-weight entries with the current
  estimate. Cost per iteration: one SVD.
* ``adam``: Adam on (U, V) with the gradient of ``E``; cost per iteration O(out * in * r).
* ``adam_sgd``: Adam, then plain (full-batch) gradient descent after ``switch_at`` of the
  iterations, with step ``1 / (2 * max(||U||_2^2, ||V||_2^2))`` (the Lipschitz bound of the
  gradient for weights <= 1).

Normalization: real Fisher values span many orders of magnitude. Solvers work with
``Fn = max(F / max F, floor)`` (``floor = 1e-6`` by default): scale-free, and no zero
weight makes an ALS system singular. ``history`` reports ``E`` under ``Fn``; multiply by
``info["scale"] = max F`` for (approximately, because of the floor) the original units.
Every solver tracks its best iterate, so the result is never worse than the start.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .factorize import Factorization, register_method, truncated_svd
from .progress import Progress, report

FLOOR = 1e-6
AXES = ("in", "out")
# default iteration caps: chosen so a whole MiniLM (36 matrices) stays within a few x plain SVD's time on CPU
DEFAULT_ITERS = {"als": 5, "em": 10, "adam": 60, "adam_sgd": 60}
DEFAULT_TOL = 1e-4
ALS_CHUNK = 2**24  # max elements of a batched Gram tensor (rows x r x r) built at once


def normalize_importance(F: torch.Tensor, floor: float = FLOOR) -> tuple[torch.Tensor, float]:
    """``(max(F / max F, floor), max F)``: weights in [floor, 1] and the scale removed."""
    scale = float(F.max())
    if scale <= 0:
        return torch.ones_like(F), 1.0
    return (F / scale).clamp_(min=floor), scale


def weighted_error(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, F: torch.Tensor) -> float:
    return float((F * (W - U @ V) ** 2).sum())


def _work_dtype(W: torch.Tensor) -> torch.dtype:
    return W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32


@register_method("fwsvd", "Fisher-weighted SVD (Hsu et al. 2022): closed form with Fisher summed per input feature "
                 "(axis='in', default) or per output row (axis='out').", needs_importance=True)
def fwsvd(W: torch.Tensor, rank: int, importance: Optional[torch.Tensor] = None, axis: str = "in",
          floor: float = FLOOR) -> Factorization:
    """Closed-form FWSVD; see the module docstring. ``importance=None`` means uniform (plain SVD)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    dtype = _work_dtype(W)
    X = W.to(dtype)
    if importance is None:
        U, V = truncated_svd(X, rank)
        return Factorization(U.to(W.dtype), V.to(W.dtype), info={"axis": axis})
    F = importance.to(dtype)
    dim = 0 if axis == "in" else 1  # axis="in": sum over rows -> one weight per input column
    d = F.sum(dim=dim).sqrt()
    d = d.clamp(min=max(float(d.max()) * floor, torch.finfo(dtype).tiny))
    if axis == "in":
        U, V = truncated_svd(X * d, rank)
        V = V / d
    else:
        U, V = truncated_svd(d[:, None] * X, rank)
        U = U / d[:, None]
    return Factorization(U.to(W.dtype), V.to(W.dtype), info={"axis": axis})


# ---------------------------------------------------------------- element-wise solvers
# Each solver is a generator: given (W, Fn, U, V, options) it yields successive (U, V).


def _weighted_grams(f: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``(c, r, r)`` stack of ``V diag(f_c) V^T``, as one GEMM ``f @ K`` with ``K_j = vec(v_j v_j^T)``,
    built in column chunks so ``K`` stays below ``ALS_CHUNK`` elements."""
    r, n = V.shape
    grams = torch.zeros(f.shape[0], r * r, dtype=f.dtype, device=f.device)
    step = max(1, ALS_CHUNK // (r * r))
    for j in range(0, n, step):
        Vj = V[:, j:j + step].T  # (s, r)
        grams += f[:, j:j + step] @ (Vj[:, :, None] * Vj[:, None, :]).reshape(-1, r * r)
    return grams.view(-1, r, r)


def _als_rows(W: torch.Tensor, Fn: torch.Tensor, V: torch.Tensor, ridge: float) -> torch.Tensor:
    """Rows of ``U`` minimizing ``sum_ij Fn_ij (W - U V)_ij^2`` for fixed ``V``: batched r x r solves."""
    out, r = W.shape[0], V.shape[0]
    U = torch.empty(out, r, dtype=W.dtype, device=W.device)
    eye = torch.eye(r, dtype=W.dtype, device=W.device)
    step = max(1, ALS_CHUNK // (r * r))
    for start in range(0, out, step):
        f = Fn[start:start + step]  # (c, in)
        gram = _weighted_grams(f, V)
        lam = ridge * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=torch.finfo(W.dtype).tiny)
        rhs = (f * W[start:start + step]) @ V.T  # (c, r)
        U[start:start + step] = torch.linalg.solve(gram + lam[:, None, None] * eye, rhs.unsqueeze(-1)).squeeze(-1)
    return U


def _als(W, Fn, U, V, ridge: float = 1e-8, **_):
    while True:
        U = _als_rows(W, Fn, V, ridge)
        V = _als_rows(W.T, Fn.T, U.T, ridge).T
        yield U, V


def _em(W, Fn, U, V, **_):
    rank = U.shape[1]
    X = U @ V
    while True:
        U, V = truncated_svd(Fn * W + (1 - Fn) * X, rank)
        X = U @ V
        yield U, V


def _gradient(W, Fn, U, V):
    """Gradients of E = sum Fn (W - U V)^2 with respect to U and V."""
    G = -2 * Fn * (W - U @ V)
    return G @ V.T, U.T @ G


def _adam(W, Fn, U, V, lr: Optional[float] = None, switch_at: Optional[float] = None, max_iters: int = 100, **_):
    U, V = U.clone().requires_grad_(False), V.clone()
    scale = float(torch.cat([U.flatten(), V.flatten()]).square().mean().sqrt())
    optimizer = torch.optim.Adam([U, V], lr=lr if lr is not None else 1e-2 * scale)
    switch = None if switch_at is None else (int(switch_at * max_iters) if switch_at < 1 else int(switch_at))
    step = 0
    while True:
        gU, gV = _gradient(W, Fn, U, V)
        if switch is not None and step >= switch:
            eta = 0.5 / max(float(torch.linalg.matrix_norm(U, 2)) ** 2, float(torch.linalg.matrix_norm(V, 2)) ** 2)
            U, V = U - eta * gU, V - eta * gV
        else:
            U.grad, V.grad = gU, gV
            optimizer.step()
        step += 1
        yield U.detach().clone(), V.detach().clone()


def _adam_sgd(W, Fn, U, V, switch_at: float = 0.5, **options):
    return _adam(W, Fn, U, V, switch_at=switch_at, **options)


SOLVERS: dict[str, Callable] = {"als": _als, "em": _em, "adam": _adam, "adam_sgd": _adam_sgd}


def optimize(W: torch.Tensor, importance: torch.Tensor, U: torch.Tensor, V: torch.Tensor, solver: str = "als",
             max_iters: Optional[int] = None, tol: float = DEFAULT_TOL, floor: float = FLOOR,
             progress: Optional[Progress] = None, **options) -> Factorization:
    """Minimize ``sum F (W - U V)^2`` from the start ``(U, V)`` with an element-wise solver.

    Stops after ``max_iters`` iterations or when the relative improvement of ``E`` falls
    below ``tol``; returns the best iterate (never worse than the start) with
    ``history = [E_start, E_1, ...]`` (normalized importance, see module docstring).
    Used by ``tfwsvd`` (start: FWSVD) and ``sparsity_aware`` (start: SVD of the pruned matrix).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
    dtype = _work_dtype(W)
    X, (Fn, scale) = W.to(dtype), normalize_importance(importance.to(dtype), floor)
    U, V = U.to(dtype), V.to(dtype)
    iters = DEFAULT_ITERS[solver] if max_iters is None else max_iters
    best = (weighted_error(X, U, V, Fn), U, V)
    history = [best[0]]
    steps = SOLVERS[solver](X, Fn, U, V, max_iters=iters, **options)
    for it in range(iters):
        U, V = next(steps)
        error = weighted_error(X, U, V, Fn)
        if not torch.isfinite(torch.tensor(error)) or (solver == "als" and error > history[-1]):
            break  # diverged, or ALS hit the ridge's floating-point floor: keep the best so far
        history.append(error)
        report(progress, it + 1, iters, f"{solver}: E = {error:.4g}")
        improvement = (history[-2] - error) / max(history[-2], torch.finfo(dtype).tiny)
        if error < best[0]:
            best = (error, U, V)
        if abs(improvement) < tol:
            break
    info = {"solver": solver, "iters": len(history) - 1, "scale": scale, "start_error": history[0], "error": best[0]}
    return Factorization(best[1].to(W.dtype), best[2].to(W.dtype), history=history, info=info)


def fwsvd_start(W: torch.Tensor, rank: int, importance: torch.Tensor, axis: str = "best") -> Factorization:
    """FWSVD start for the element-wise solvers: ``axis="in"``/``"out"``, or ``"best"``: both
    orientations, keeping the one with the lower element-wise error ``E`` (one extra SVD)."""
    if axis != "best":
        return fwsvd(W, rank, importance, axis=axis)
    candidates = [fwsvd(W, rank, importance, axis=a) for a in AXES]
    X, F = W.to(_work_dtype(W)), importance.to(_work_dtype(W))
    return min(candidates, key=lambda c: weighted_error(X, c.U.to(X.dtype), c.V.to(X.dtype), F))


@register_method("tfwsvd", "Element-wise Fisher-weighted factorization (Hua et al. 2022), started from FWSVD; "
                 "solver='als' (default), 'em', 'adam' or 'adam_sgd'.", needs_importance=True)
def tfwsvd(W: torch.Tensor, rank: int, importance: Optional[torch.Tensor] = None, solver: str = "als",
           init_axis: str = "best", **options) -> Factorization:
    """FWSVD start (:func:`fwsvd_start`), then :func:`optimize` with the element-wise importance."""
    if importance is None:
        raise ValueError("tfwsvd needs an importance tensor")
    start = fwsvd_start(W, rank, importance, init_axis)
    result = optimize(W, importance, start.U, start.V, solver=solver, **options)
    result.info["init"] = f"fwsvd[{start.info['axis']}]"
    return result
