"""Forward/backward hooks that hand each Linear's per-example inputs and output gradients to an accumulator.

A forward hook keeps the layer input ``x_n`` (T, in) and a tensor hook on the output
receives ``g_n = d l / d y_n`` (T, out) for every example ``n`` of the batch. The batch
loss is a mean over examples, so ``g`` is rescaled by the batch size to per-example losses.
"""

from __future__ import annotations

import torch
from torch import nn


class PerExampleCollector:
    """Hooks handing each Linear's per-example ``(x_n, g_n)`` (both (batch, T, features)) to ``consume``."""

    def __init__(self, module: nn.Linear):
        self.scale = 1.0  # the batch loss is a mean over examples: g is rescaled to per-example losses
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

    def remove(self) -> None:
        self.handle.remove()


class SquaredGradients(PerExampleCollector):
    """Accumulates ``sum_n (g_n^T x_n)^2``, one (out, in) example gradient at a time."""

    def __init__(self, module: nn.Linear):
        super().__init__(module)
        self.total = torch.zeros_like(module.weight, dtype=torch.float32)

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        for n in range(x.shape[0]):
            self.total.add_((g[n].transpose(0, 1) @ x[n]).square_())


class DirectionalDerivatives(PerExampleCollector):
    """Collects ``s_n = sum_t g_nt^T dW x_nt`` for a fixed change ``dW`` (out, in)."""

    def __init__(self, module: nn.Linear, delta: torch.Tensor):
        super().__init__(module)
        self.delta = delta.to(module.weight.device, torch.float32)
        self.values: list[torch.Tensor] = []

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        self.values.append(((x @ self.delta.T) * g).sum(dim=(1, 2)).double().cpu())
