"""``LowRankLinear``: a drop-in replacement for ``nn.Linear`` holding two factors.

``y = x V^T U^T + b`` with ``U`` (out, r) and ``V`` (r, in): two thin matmuls,
``r * (out + in)`` weights instead of ``out * in``. Worth it only below break-even,
``r * (out + in) < out * in``; at or above it the layer must stay dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# How a factorized layer may run (lowrank.speed): its two products, their compiled graph, or merged to W = U V.
FORMS = ("factorized", "compiled", "dense")


def break_even_rank(out_features: int, in_features: int) -> int:
    """Smallest rank whose factors are not smaller than the dense matrix: ceil(out*in/(out+in))."""
    return -(-out_features * in_features // (out_features + in_features))


def max_useful_rank(out_features: int, in_features: int) -> int:
    """Largest rank that saves parameters: the rank just below break-even (0 if none)."""
    return min(break_even_rank(out_features, in_features) - 1, out_features, in_features)


def check_rank(rank: int, out_features: int, in_features: int, name: str = "layer") -> None:
    """Raise ``ValueError`` unless ``1 <= rank`` and ``rank * (out + in) < out * in``."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"{name}: rank must be an integer, got {rank!r}")
    if rank < 1:
        raise ValueError(f"{name}: rank must be at least 1, got {rank} (keep the layer dense instead)")
    if rank > min(out_features, in_features):
        raise ValueError(
            f"{name}: rank {rank} exceeds min(out, in) = {min(out_features, in_features)} "
            f"for a {out_features}x{in_features} weight"
        )
    if rank * (out_features + in_features) >= out_features * in_features:
        raise ValueError(
            f"{name}: rank {rank} is at or above break-even for a {out_features}x{in_features} weight "
            f"({rank * (out_features + in_features)} >= {out_features * in_features} parameters); "
            f"the largest useful rank is {max_useful_rank(out_features, in_features)}, keep the layer dense instead"
        )


def product(x: torch.Tensor, V: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(x V^T) U^T + b``: two thin matmuls."""
    return F.linear(F.linear(x, V), U, bias)


class LowRankLinear(nn.Module):
    """``nn.Linear``-compatible layer ``y = (x V^T) U^T + b``.

    Parameters: ``U`` (out, r), ``V`` (r, in), optional ``bias`` (out,).
    Cost per token: ``r * (out + in)`` multiply-adds instead of ``out * in``. ``product``: the function
    computing it (:func:`product`, or its compiled form set by :mod:`lowrank.speed`).
    """

    product = staticmethod(product)

    def __init__(self, U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None = None, name: str = "layer"):
        super().__init__()
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[0]:
            raise ValueError(f"{name}: factors must be (out, r) and (r, in), got {tuple(U.shape)} and {tuple(V.shape)}")
        check_rank(U.shape[1], U.shape[0], V.shape[1], name)
        self.U = nn.Parameter(U.detach().clone())
        self.V = nn.Parameter(V.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def empty(cls, out_features: int, in_features: int, rank: int, bias: bool, dtype=None, device=None):
        """A layer of the right shapes with zero factors, to be filled by ``load_state_dict``."""
        U = torch.zeros(out_features, rank, dtype=dtype, device=device)
        V = torch.zeros(rank, in_features, dtype=dtype, device=device)
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        return cls(U, V, b)

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def in_features(self) -> int:
        return self.V.shape[1]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent ``U V`` (out, in); computed on demand, for inspection only."""
        return self.U @ self.V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.V, self.U, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"
