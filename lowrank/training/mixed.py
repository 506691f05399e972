"""Mixed-rank fine-tuning (LPAF, Ren & Zhu 2023): move a pruned model onto its low-rank factors.

A :class:`MixedRankLinear` holds the sparse weight ``W ⊙ M`` (mask fixed) and factors ``U`` (out, r), ``V``
(r, in) of it, with one bias. In training each forward of each layer takes the sparse path
``y = x (W ⊙ M)^T + b`` with probability ``p``, else ``y = (x V^T) U^T + b``; both are trained, and eval uses
the factors. :class:`MixedRankAnnealing` anneals ``p`` from ``p0`` to 0 (:func:`anneal`); :func:`finalize`
leaves plain :class:`~lowrank.layers.LowRankLinear` layers. Cost per forward: one of the two paths.
Reconstruction: the paper's text is not available here; sampling per layer (rather than one coin per forward
pass for the whole model) and the two schedules are ours.
Details: docs/methods.md#score-weighting-and-mixed-rank-schedule-in-full.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lowrank.compress import set_module
from lowrank.layers import LowRankLinear, check_rank
from lowrank.training.finetune import TrainingHook

SCHEDULES = ("linear", "cosine")


class MixedRankLinear(nn.Module):
    """A Linear layer with a sparse path (``weight * mask``) and a low-rank path (``U V``); see module docstring."""

    def __init__(
        self,
        U: torch.Tensor,
        V: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None = None,
        p: float = 0.0,
        name: str = "layer",
    ):
        super().__init__()
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[0]:
            raise ValueError(f"{name}: factors must be (out, r) and (r, in), got {tuple(U.shape)} and {tuple(V.shape)}")
        if weight.shape != (U.shape[0], V.shape[1]) or mask.shape != weight.shape:
            raise ValueError(
                f"{name}: weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be "
                f"({U.shape[0]}, {V.shape[1]}) like U V"
            )
        check_rank(U.shape[1], U.shape[0], V.shape[1], name)
        self.U = nn.Parameter(U.detach().clone())
        self.V = nn.Parameter(V.detach().clone())
        self.register_buffer("mask", mask.detach().to(device=weight.device, dtype=torch.bool).clone())
        self.weight = nn.Parameter(weight.detach().clone() * self.mask)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.p = p
        self.name = name

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"probability of the sparse path must be in [0, 1], got {value}")
        self._p = float(value)

    def sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def low_rank_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._p > 0.0 and float(torch.rand(())) < self._p:
            return self.sparse_forward(x)
        return self.low_rank_forward(x)

    def to_low_rank(self) -> LowRankLinear:
        return LowRankLinear(
            self.U.detach(), self.V.detach(), None if self.bias is None else self.bias.detach(), name=self.name
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.V.shape[1]}, out_features={self.U.shape[0]}, rank={self.rank}, "
            f"density={float(self.mask.float().mean()):.3f}, p={self._p:.3f}"
        )


def mixed_rank_layers(model: nn.Module) -> dict[str, MixedRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MixedRankLinear)}


def to_mixed_rank(
    model: nn.Module, weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], p: float = 0.0
) -> dict[str, MixedRankLinear]:
    """Replace, in place, every ``LowRankLinear`` of ``model`` by a ``MixedRankLinear``.

    ``weights``/``masks``: ``{name: tensor}`` the pruned full weight and its mask for each
    factorized layer (every ``LowRankLinear`` must have both). Returns the new layers.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    missing = sorted(n for n in layers if n not in weights or n not in masks)
    if missing:
        raise ValueError(f"no pruned weight or mask for factorized layers {missing[:3]}")
    mixed = {}
    for name, layer in layers.items():
        device = layer.U.device
        mixed[name] = MixedRankLinear(
            layer.U,
            layer.V,
            weights[name].to(device=device, dtype=layer.U.dtype),
            masks[name].to(device),
            layer.bias,
            p=p,
            name=name,
        )
        set_module(model, name, mixed[name])
    return mixed


def finalize(model: nn.Module) -> int:
    """Replace, in place, every ``MixedRankLinear`` by its ``LowRankLinear``; returns how many."""
    layers = mixed_rank_layers(model)
    for name, layer in layers.items():
        set_module(model, name, layer.to_low_rank())
    return len(layers)


def anneal(step: int, total: int, p0: float = 0.5, schedule: str = "linear", until: float = 1.0) -> float:
    """Probability of the sparse path after ``k = step`` of ``total`` steps, with ``T_a = until * total``::

        linear:  p(k) = p0 * max(0, 1 - k / T_a)
        cosine:  p(k) = p0 * (1 + cos(pi * min(1, k / T_a))) / 2

    so the final steps train the low-rank model alone.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"annealing schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must be in [0, 1], got {p0}")
    if not 0.0 < until <= 1.0:
        raise ValueError(f"until must be in (0, 1], got {until}")
    progress = min(1.0, step / max(1.0, until * total))
    if schedule == "linear":
        return p0 * (1.0 - progress)
    return p0 * 0.5 * (1.0 + math.cos(math.pi * progress))


class MixedRankAnnealing(TrainingHook):
    """Sets ``p`` of every ``MixedRankLinear`` to ``p0`` at the start, then anneals it after each step.

    ``history``: the probability in force after each optimizer step (last value 0 when ``until <= 1``).
    """

    def __init__(self, p0: float = 0.5, schedule: str = "linear", until: float = 1.0):
        anneal(0, 1, p0, schedule, until)  # validates the arguments
        self.p0, self.schedule, self.until = p0, schedule, until
        self.total = 0
        self.layers: dict[str, MixedRankLinear] = {}
        self.history: list[float] = []

    def _set(self, p: float) -> None:
        for layer in self.layers.values():
            layer.p = p

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        self.layers = mixed_rank_layers(model)
        if not self.layers:
            raise ValueError("mixed-rank annealing needs MixedRankLinear layers (call to_mixed_rank first)")
        self.total = total_steps
        self.history = []
        self._set(self.p0)

    def after_step(self, model: nn.Module, step: int) -> None:
        p = anneal(step + 1, self.total, self.p0, self.schedule, self.until)
        self._set(p)
        self.history.append(p)
