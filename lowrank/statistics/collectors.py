"""Forward/backward hooks that hand each Linear's per-example inputs and output gradients to an accumulator.

A forward hook keeps the layer input ``x_n`` (T, in) and a tensor hook on the output
receives ``g_n = d l / d y_n`` (T, out) for every example ``n`` of the batch. The batch
loss is a mean over examples, so ``g`` is rescaled by the batch size to per-example losses.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 2**25  # max elements of a batch of per-example gradients (examples x out x in) formed at once


class PerExampleCollector:
    """Hooks handing each Linear's per-example ``(x_n, g_n)`` (both (batch, T, features)) to ``consume``.

    ``accumulators()`` lists the tensors that are sums over examples (all-reduced by a
    data-parallel pass, :mod:`lowrank.statistics.passes`)."""

    def __init__(self, module: nn.Linear):
        self.scale = 1.0  # the batch loss is a mean over examples: g is rescaled to per-example losses
        self.mask = None  # token mask of the batch (unused: padded tokens get no gradient)
        self.handle = module.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        x = inputs[0].detach()
        if output.requires_grad:
            output.register_hook(lambda g: self._backward(x, g))

    def _backward(self, x: torch.Tensor, g: torch.Tensor) -> None:
        x, g = x.reshape(x.shape[0], -1, x.shape[-1]).float(), g.reshape(g.shape[0], -1, g.shape[-1]).float()
        self.consume(x, g * self.scale)

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulators(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def remove(self) -> None:
        self.handle.remove()


class SquaredGradients(PerExampleCollector):
    """Accumulates ``sum_n (g_n^T x_n)^2``: the per-example gradients of a batch are formed together
    (one batched product, in chunks of at most :data:`CHUNK` elements), squared and summed."""

    def __init__(self, module: nn.Linear):
        super().__init__(module)
        self.total = torch.zeros_like(module.weight, dtype=torch.float32)

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        step = max(1, CHUNK // self.total.numel())
        for start in range(0, x.shape[0], step):
            grads = torch.bmm(g[start : start + step].transpose(1, 2), x[start : start + step])  # (chunk, out, in)
            self.total.add_(grads.square_().sum(dim=0))

    def accumulators(self) -> list[torch.Tensor]:
        return [self.total]

    def result(self, examples: int) -> dict[str, torch.Tensor]:
        """``{"fisher": F}``, ``F = (1 / N) sum_n (g_n^T x_n)^2`` over the ``examples`` seen, on the CPU."""
        return {"fisher": (self.total / max(examples, 1)).cpu()}


class DirectionalDerivatives(PerExampleCollector):
    """Sums ``s_n = sum_t g_nt^T dW x_nt`` and ``s_n^2`` over examples for a fixed change ``dW`` (out, in)."""

    def __init__(self, module: nn.Linear, delta: torch.Tensor):
        super().__init__(module)
        self.delta = delta.to(module.weight.device, torch.float32)
        self.sums = torch.zeros(2, dtype=torch.float64, device=module.weight.device)  # (sum s_n, sum s_n^2)

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        s = ((x @ self.delta.T) * g).sum(dim=(1, 2)).double()
        self.sums += torch.stack([s.sum(), s.square().sum()])

    def accumulators(self) -> list[torch.Tensor]:
        return [self.sums]
