"""Element-wise weighted low-rank solvers: minimize ``E(U, V) = sum_ij F_ij (W - U V)_ij^2`` from a start ``(U, V)``.

``F >= 0`` (out, in) is normalized, ``Fn = max(F / max F, floor)``; ``history`` is ``E`` under ``Fn`` (times
``info["scale"] = max F`` for original units). ``als``: alternating weighted least squares, each r x r row system
solved by ``cg_steps`` Jacobi-preconditioned CG steps (O(k out in r) per half-iteration) or exactly with a tiny
ridge (``cg_steps=0``, O(out in r^2)); ``em`` (Srebro & Jaakkola 2003): ``X <- SVD_r(Wn W + (1 - Wn) X)``, one
SVD per iteration; ``adam`` and ``adam_sgd``: gradient steps, O(out in r) per iteration. Every solver keeps its
best iterate, so the result is never worse than the start. The solvers are the standard ones Hua et al. (2022)
name; their details are reconstructions. Details and measurements: docs/methods.md#tfwsvd-hua-et-al-2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lowrank.methods.registry import Factorization, weighted_error
from lowrank.methods.svd import truncated_svd
from lowrank.progress import Progress, report

FLOOR = 1e-6
# Default iteration caps: chosen so that each solver's whole run (FWSVD start included; the "best" start costs
# 2 SVDs) stays within the time target of 10x one plain SVD of the same matrix. The per-iteration costs they were
# chosen from are in docs/results/weighted.md ("Solver notes").
DEFAULT_ITERS = {"als": 5, "em": 5, "adam": 40, "adam_sgd": 40}
CG_STEPS = 5  # ALS inner conjugate-gradient steps per system; 0 = exact batched solves
DEFAULT_TOL = 1e-4
ALS_CHUNK = 2**24  # max elements of a batched Gram tensor (rows x r x r) built at once


def normalize_importance(F: torch.Tensor, floor: float = FLOOR) -> tuple[torch.Tensor, float]:
    """``(Fn, scale) = (max(F / max F, floor), max F)``: weights in [floor, 1], scale removed.

    Why: Fisher values span many orders of magnitude; an exact zero would make an ALS system singular
    and leave EM nothing to pull an entry towards ``W``. ``E`` under ``Fn`` is scale-free;
    ``scale * E_n`` is ``E`` in original units up to the floor (entries below
    ``floor * max F`` count as that). All-zero ``F`` (no information) gives uniform weights."""
    scale = float(F.max())
    if scale <= 0:
        return torch.ones_like(F), 1.0
    return (F / scale).clamp_(min=floor), scale


def work_dtype(W: torch.Tensor) -> torch.dtype:
    """float32/float64 stay; anything else (half, bfloat16) is solved in float32."""
    return W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32


# Each solver is a generator: given (W, Fn, U, V, options) it yields successive (U, V).


def _weighted_grams(f: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``(c, r, r)`` stack of ``V diag(f_c) V^T``, as one GEMM ``f @ K`` with ``K_j = vec(v_j v_j^T)``,
    built in column chunks so ``K`` stays below ``ALS_CHUNK`` elements."""
    r, n = V.shape
    grams = torch.zeros(f.shape[0], r * r, dtype=f.dtype, device=f.device)
    step = max(1, ALS_CHUNK // (r * r))
    for j in range(0, n, step):
        Vj = V[:, j : j + step].T  # (s, r)
        grams += f[:, j : j + step] @ (Vj[:, :, None] * Vj[:, None, :]).reshape(-1, r * r)
    return grams.view(-1, r, r)


def _exact_rows(W: torch.Tensor, Fn: torch.Tensor, V: torch.Tensor, ridge: float) -> torch.Tensor:
    """Rows of ``U`` minimizing ``sum_ij Fn_ij (W - U V)_ij^2`` for fixed ``V``: batched r x r solves."""
    out, r = W.shape[0], V.shape[0]
    U = torch.empty(out, r, dtype=W.dtype, device=W.device)
    eye = torch.eye(r, dtype=W.dtype, device=W.device)
    step = max(1, ALS_CHUNK // (r * r))
    for start in range(0, out, step):
        f = Fn[start : start + step]  # (c, in)
        gram = _weighted_grams(f, V)
        lam = ridge * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=torch.finfo(W.dtype).tiny)
        rhs = (f * W[start : start + step]) @ V.T  # (c, r)
        U[start : start + step] = torch.linalg.solve(gram + lam[:, None, None] * eye, rhs.unsqueeze(-1)).squeeze(-1)
    return U


def _cg_rows(W: torch.Tensor, Fn: torch.Tensor, V: torch.Tensor, U: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` Jacobi-preconditioned CG iterations on every ``A_i u_i = b_i`` at once, from ``U``.

    Row-wise scalars (``alpha``, ``beta``) keep the systems independent; ``A P`` for all rows
    is ``((P V) * Fn) V^T``. Exact after ``r`` steps in exact arithmetic."""
    tiny = torch.finfo(W.dtype).tiny

    def rowdot(a, b):
        return (a * b).sum(dim=1, keepdim=True)

    residual = (Fn * (W - U @ V)) @ V.T  # b - A u
    inv_diag = 1 / (Fn @ (V * V).T).clamp(min=tiny)
    z = inv_diag * residual
    direction, rz = z, rowdot(residual, z)
    for _ in range(steps):
        A_dir = ((direction @ V) * Fn) @ V.T
        alpha = rz / rowdot(direction, A_dir).clamp(min=tiny)
        U, residual = U + alpha * direction, residual - alpha * A_dir
        z = inv_diag * residual
        rz, rz_old = rowdot(residual, z), rz
        direction = z + rz / rz_old.clamp(min=tiny) * direction
    return U


def _als(W, Fn, U, V, ridge: float = 1e-8, cg_steps: int = CG_STEPS, **_):
    def rows(W, Fn, V, U):
        return _cg_rows(W, Fn, V, U, cg_steps) if cg_steps > 0 else _exact_rows(W, Fn, V, ridge)

    while True:
        U = rows(W, Fn, V, U)
        V = rows(W.T, Fn.T, U.T, V.T).T
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


def _adam(W, Fn, U, V, lr: float | None = None, switch_at: float | None = None, max_iters: int = 100, **_):
    U, V = U.clone(), V.clone()
    rms = float(torch.cat([U.flatten(), V.flatten()]).square().mean().sqrt())
    optimizer = torch.optim.Adam([U, V], lr=lr if lr is not None else 1e-2 * rms / U.shape[1] ** 0.5)
    switch = None if switch_at is None else (int(switch_at * max_iters) if switch_at < 1 else int(switch_at))
    step = 0
    while True:
        gU, gV = _gradient(W, Fn, U, V)
        if switch is not None and step >= switch:
            # ||U||_2^2, ||V||_2^2 from the r x r Grams: cheaper than two SVD-based norms (docs/results/weighted.md)
            eta = 0.5 / max(float(torch.linalg.eigvalsh(U.T @ U)[-1]), float(torch.linalg.eigvalsh(V @ V.T)[-1]))
            U, V = U - eta * gU, V - eta * gV
        else:
            U.grad, V.grad = gU, gV
            optimizer.step()
        step += 1
        yield U.detach().clone(), V.detach().clone()


def _adam_sgd(W, Fn, U, V, switch_at: float = 0.5, **options):
    return _adam(W, Fn, U, V, switch_at=switch_at, **options)


SOLVERS: dict[str, Callable] = {"als": _als, "em": _em, "adam": _adam, "adam_sgd": _adam_sgd}
# solver-specific keyword options; anything else is rejected (a misspelt option must not be ignored silently)
SOLVER_OPTIONS = {"als": ("ridge", "cg_steps"), "em": (), "adam": ("lr",), "adam_sgd": ("lr", "switch_at")}


def check_solver_options(
    solver: str = "als",
    max_iters: int | None = None,
    tol: float = DEFAULT_TOL,
    floor: float = FLOOR,
    progress: Progress | None = None,
    **options,
) -> None:
    """Raise ``ValueError`` for an unknown solver, an option it does not take, or a bad ``max_iters`` /
    ``tol`` / ``floor``; :func:`optimize` and the methods' ``validate`` (before any work) call it."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
    unknown = sorted(set(options) - set(SOLVER_OPTIONS[solver]))
    if unknown:
        known = ", ".join(("max_iters", "tol", "floor", "progress") + SOLVER_OPTIONS[solver])
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; known: {known}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0):
        raise ValueError(f"max_iters must be a non-negative integer, got {max_iters!r}")
    for name, value in (("tol", tol), ("floor", floor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def optimize(
    W: torch.Tensor,
    importance: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    solver: str = "als",
    max_iters: int | None = None,
    tol: float = DEFAULT_TOL,
    floor: float = FLOOR,
    progress: Progress | None = None,
    **options,
) -> Factorization:
    """Minimize ``sum F (W - U V)^2`` from the start ``(U, V)`` with an element-wise solver.

    Stops after ``max_iters`` iterations or when the relative improvement of ``E`` falls
    below ``tol``; returns the best iterate (never worse than the start) with
    ``history = [E_start, E_1, ...]`` (normalized importance, see module docstring).
    """
    check_solver_options(solver, max_iters, tol, floor, **options)
    dtype = work_dtype(W)
    X, (Fn, scale) = W.to(dtype), normalize_importance(importance.to(dtype), floor)
    U, V = U.to(dtype), V.to(dtype)
    iters = DEFAULT_ITERS[solver] if max_iters is None else max_iters
    best = (weighted_error(X, U, V, Fn), U, V)
    history = [best[0]]
    steps = SOLVERS[solver](X, Fn, U, V, max_iters=iters, **options)
    for it in range(iters):
        U, V = next(steps)
        error = weighted_error(X, U, V, Fn)
        if not math.isfinite(error) or (solver == "als" and error > history[-1]):
            break  # diverged, or ALS stalled at floating-point precision: keep the best so far
        history.append(error)
        report(progress, it + 1, iters, f"{solver}: E = {error:.4g}")
        improvement = (history[-2] - error) / max(history[-2], torch.finfo(dtype).tiny)
        if error < best[0]:
            best = (error, U, V)
        if abs(improvement) < tol:
            break
    if len(history) - 1 < iters:  # stopped early: complete the progress bar
        report(progress, iters, iters, f"{solver}: stopped after {len(history) - 1} iterations, E = {best[0]:.4g}")
    info = {"solver": solver, "iters": len(history) - 1, "scale": scale, "start_error": history[0], "error": best[0]}
    return Factorization(best[1].to(W.dtype), best[2].to(W.dtype), history=history, info=info)
