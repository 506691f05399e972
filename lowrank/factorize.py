"""Low-rank factorization of a single weight matrix, and the registry of methods.

Every method solves (exactly or approximately)

    min_{U, V}  sum_ij F_ij (W - U V)_ij^2,     W: (out, in), U: (out, r), V: (r, in)

for some non-negative importance ``F`` (``F = 1`` for plain SVD). Methods are
registered with :func:`register_method`; the CLI and the dashboard list whatever
is registered, so adding a method needs no UI change.

``factorize`` returns a :class:`Factorization`, which unpacks like a pair::

    U, V = factorize(W, rank=16)
    result = factorize(W, 16, method="tfwsvd", importance=F); result.history
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch


@dataclass
class Factorization:
    """Factors ``U`` (out, r) and ``V`` (r, in) with ``U @ V`` approximating ``W``.

    ``history`` holds the weighted error ``E`` per iteration for iterative
    methods (first entry: the starting point), empty for closed forms.
    ``info`` holds method-specific facts (e.g. the FWSVD orientation used).
    """

    U: torch.Tensor
    V: torch.Tensor
    history: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.U, self.V))

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def matrix(self) -> torch.Tensor:
        return self.U @ self.V


@dataclass(frozen=True)
class Method:
    """A registered factorization method."""

    name: str
    fn: Callable[..., Factorization]
    description: str
    needs_importance: bool


METHODS: dict[str, Method] = {}


def register_method(name: str, description: str, needs_importance: bool = False):
    """Decorator registering ``fn(W, rank, importance=None, **options) -> Factorization``."""

    def decorate(fn):
        METHODS[name] = Method(name, fn, description, needs_importance)
        return fn

    return decorate


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(METHODS)


def get_method(name: str) -> Method:
    _load_builtin_methods()
    if name not in METHODS:
        raise ValueError(f"unknown factorization method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# Modules whose import registers further methods; imported lazily to avoid import cycles.
BUILTIN_METHOD_MODULES: tuple[str, ...] = ("lowrank.weighted", "lowrank.sparsity")


def _load_builtin_methods() -> None:
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


def check_weight(W: torch.Tensor, rank: int) -> None:
    """Raise ``ValueError`` for a non-matrix, non-finite weight or a rank outside [1, min(out, in)]."""
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        bad = (~torch.isfinite(W)).sum().item()
        raise ValueError(f"weight has {bad} non-finite entries (NaN/inf); refusing to factorize")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"rank must be an integer, got {rank!r}")
    limit = min(W.shape)
    if not 1 <= rank <= limit:
        raise ValueError(f"rank {rank} out of range for a {W.shape[0]}x{W.shape[1]} matrix (1..{limit})")


def check_importance(importance: Optional[torch.Tensor], W: torch.Tensor, required: bool, method: str):
    if importance is None:
        if required:
            raise ValueError(f"method {method!r} needs an importance tensor (e.g. Fisher information)")
        return None
    importance = torch.as_tensor(importance)
    if importance.shape != W.shape:
        raise ValueError(f"importance shape {tuple(importance.shape)} does not match weight shape {tuple(W.shape)}")
    if not torch.isfinite(importance).all() or (importance < 0).any():
        raise ValueError("importance must be finite and non-negative")
    return importance.to(device=W.device, dtype=W.dtype)


def factorize(
    W: torch.Tensor,
    rank: int,
    method: str = "svd",
    importance: Optional[torch.Tensor] = None,
    **options,
) -> Factorization:
    """Rank-``rank`` factorization of ``W`` (out, in) with a registered ``method``.

    ``importance`` (same shape as ``W``, non-negative) weights the squared error;
    ``options`` go to the method (e.g. ``solver="als"`` for ``tfwsvd``).
    The factors have ``W``'s dtype and device.
    """
    spec = get_method(method)
    W = torch.as_tensor(W)
    check_weight(W, rank)
    importance = check_importance(importance, W, spec.needs_importance, method)
    return spec.fn(W, rank, importance=importance, **options)


def truncated_svd(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r approximation in Frobenius norm (Eckart-Young), split as
    ``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T`` so both factors are balanced.

    Cost: one thin SVD, O(out * in * min(out, in)).
    """
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def weighted_error(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, importance: Optional[torch.Tensor] = None) -> float:
    """``E = sum_ij F_ij (W - U V)_ij^2`` (``F = 1`` when ``importance`` is None)."""
    residual = (W - U @ V) ** 2
    if importance is not None:
        residual = residual * importance
    return float(residual.sum())


@register_method("svd", "Plain truncated SVD: optimal for unweighted Frobenius error.")
def _svd(W: torch.Tensor, rank: int, importance: Optional[torch.Tensor] = None) -> Factorization:
    U, V = truncated_svd(W, rank)
    return Factorization(U, V)
