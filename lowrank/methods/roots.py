"""Safeguarded square roots of positive semi-definite second moments (for whitening methods).

Given ``A`` (n, n) symmetric PSD, find ``L`` with ``A ~ L L^T`` (and, when asked, its inverse), in float64: Cholesky
of ``A``; if ``A`` is not positive definite (rank-deficient calibration data, dead features), Cholesky of
``A + eps * mean(diag A) * I`` for ``eps`` in :data:`JITTERS`; if every jitter fails, the eigen-decomposition
``A = Q diag(lam) Q^T`` with eigenvalues clipped at ``CLIP * max(lam)``, ``L = Q diag(sqrt(lam_clipped))``.
A Cholesky factor is accepted when it succeeded and is finite with a positive diagonal (then ``L`` is invertible);
with ``inverse=True`` its inverse must also be finite in float64. The two rules choose the same level unless a
finite, positive-diagonal ``L`` has an inverse beyond float64's range. The regularizer used is returned
(``"none"``, ``"jitter 1e-06"``, ``"eigen (k clipped)"``); a matrix without data gives the identity.
Cost: Cholesky n^3/3, the triangular inverse n^3 more (skipped with ``inverse=False``); the fallback O(n^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

JITTERS = (1e-8, 1e-6, 1e-4, 1e-2)
CLIP = 1e-10


@dataclass
class Root:
    """``L`` (n, n) with ``A ~ L L^T``, its inverse (``None`` when not asked for), and the regularizer needed."""

    L: torch.Tensor
    L_inv: torch.Tensor | None
    regularizer: str


def _usable(L: torch.Tensor, info: torch.Tensor) -> bool:
    """A Cholesky factor that succeeded, is finite and has a positive diagonal (hence is invertible)."""
    return int(info) == 0 and bool(torch.isfinite(L).all()) and bool((L.diagonal() > 0).all())


def _shifted(A: torch.Tensor, shift: float) -> torch.Tensor:
    """``A + shift * I`` (a copy)."""
    shifted = A.clone()
    shifted.diagonal().add_(shift)
    return shifted


def psd_root(A: torch.Tensor, inverse: bool = True) -> Root:
    """Safeguarded square root of ``A``; see the module docstring. ``inverse=False`` leaves ``L_inv`` ``None``
    (for code that only needs ``L``, e.g. the singular values of a whitened weight)."""
    A = A.double()
    A = (A + A.T).mul_(0.5)
    n = A.shape[0]
    scale = float(A.diagonal().mean())
    if not scale > 0 or not torch.isfinite(A).all():
        eye = torch.eye(n, dtype=A.dtype, device=A.device)
        return Root(eye, eye if inverse else None, "identity (no data)")
    for eps in (0.0,) + JITTERS:
        L, info = torch.linalg.cholesky_ex(A if eps == 0 else _shifted(A, eps * scale))
        if not _usable(L, info):
            continue
        L_inv = (
            torch.linalg.solve_triangular(L, torch.eye(n, dtype=A.dtype, device=A.device), upper=False)
            if inverse
            else None
        )
        if L_inv is None or torch.isfinite(L_inv).all():
            return Root(L, L_inv, "none" if eps == 0 else f"jitter {eps:g}")
    lam, Q = torch.linalg.eigh(A)
    floor = CLIP * float(lam.max())
    clipped = int((lam < floor).sum())
    root = lam.clamp(min=floor).sqrt()
    return Root(Q * root, (Q / root).T if inverse else None, f"eigen ({clipped} clipped)")
