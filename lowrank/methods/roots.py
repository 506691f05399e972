"""Safeguarded square roots of positive semi-definite second moments (for whitening methods).

Given ``A`` (n, n) symmetric PSD, find ``L`` with ``A ~ L L^T`` and its inverse, in float64: Cholesky of ``A``;
if ``A`` is not positive definite (rank-deficient calibration data, dead features), Cholesky of
``A + eps * mean(diag A) * I`` for ``eps`` in :data:`JITTERS`; if every jitter fails, the eigen-decomposition
``A = Q diag(lam) Q^T`` with eigenvalues clipped at ``CLIP * max(lam)``, ``L = Q diag(sqrt(lam_clipped))``.
The regularizer used is returned (``"none"``, ``"jitter 1e-06"``, ``"eigen (k clipped)"``); a matrix without
data gives the identity. Cost: O(n^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

JITTERS = (1e-8, 1e-6, 1e-4, 1e-2)
CLIP = 1e-10


@dataclass
class Root:
    """``L`` (n, n) with ``A ~ L L^T``, its inverse, and the regularizer that was needed."""

    L: torch.Tensor
    L_inv: torch.Tensor
    regularizer: str


def psd_root(A: torch.Tensor) -> Root:
    """Safeguarded square root of ``A``; see the module docstring. Cost: O(n^3)."""
    A = A.double()
    A = 0.5 * (A + A.T)
    n = A.shape[0]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    scale = float(A.diagonal().mean())
    if not scale > 0 or not torch.isfinite(A).all():
        return Root(eye, eye, "identity (no data)")
    for eps in (0.0,) + JITTERS:
        L, info = torch.linalg.cholesky_ex(A + eps * scale * eye)
        if int(info) == 0:
            inverse = torch.linalg.solve_triangular(L, eye, upper=False)
            if torch.isfinite(inverse).all():
                return Root(L, inverse, "none" if eps == 0 else f"jitter {eps:g}")
    lam, Q = torch.linalg.eigh(A)
    floor = CLIP * float(lam.max())
    clipped = int((lam < floor).sum())
    root = lam.clamp(min=floor).sqrt()
    return Root(Q * root, (Q / root).T, f"eigen ({clipped} clipped)")
