"""Second moments of each Linear layer's inputs and output gradients, for activation-aware and K-FAC methods.

Over the calibration tokens (padding excluded), for inputs ``x`` (in) and output gradients ``g`` (out)::

    A = E_t[x x^T]                  (in, in)     input second moment ('input_moment')
    m = E_t[|x|]                    (in,)        mean absolute input ('input_abs_mean')
    G = E_n[sum_t g_nt g_nt^T]      (out, out)   output-gradient second moment ('grad_moment')

with ``g_nt`` the gradient of example ``n``'s own loss; optionally (:class:`~lowrank.statistics.settings.
StatisticsSettings` ``grad_edge`` / ``grad_clip``) without the tokens at each end of a window and with each token's
norm clipped at a multiple of the median token norm. For error-compensated factorization, with ``x`` the input in
the dense model and ``x_hat`` the input on the same token in the model compressed so far (block sweep only)::

    M = E_t[x x_hat^T]              (in, in)     cross moment ('cross_moment')
    C = E_t[x_hat x_hat^T]          (in, in)     compressed-input second moment ('compressed_moment')
    M_k, C_k, n_k                   (FOLDS, ...) the same over fold k of the windows, and its tokens ('fold_*')

K-FAC approximates the Fisher of ``W`` as ``G (x) A``
(the normalization of ``G`` is a reconstruction). Cost: one float64 matrix product per batch and distinct input
(Linears called in turn on one tensor, q/k/v or gate/up, share it: :class:`SharedInputs`) plus one per layer for ``G``,
memory O(in^2 + out^2) per layer.
Details: docs/methods.md#activation-aware-and-kronecker-factored-methods-lowrankmethodsasvd-svd_llm-kfac_svd.
"""

from __future__ import annotations

import torch
from torch import nn

from lowrank.statistics.settings import DEFAULT, StatisticsSettings

# Folds of the calibration windows in the compensation statistics: a correction fitted on one is checked on the other.
FOLDS = 2


class SharedInputs:
    """What a hook computed from the last input tensor it saw, for the next hooks fed the same tensor.

    Linears called one after another on one tensor (q/k/v after one norm, gate/up after another) need the same
    ``x x^T``: the first hook computes it, the next ones read it. The entry is keyed on the tensors by identity and
    version (a tensor changed in place is another input) and holds them, so their ids cannot be reused while it
    lives; one entry only, so at most one input's products are kept alive. Emptied by :meth:`clear` (each batch
    and stream)."""

    def __init__(self):
        self._entry: tuple[tuple[torch.Tensor, ...], tuple[int, ...], object] | None = None

    def get(self, key: tuple[torch.Tensor, ...], compute):
        """``compute()``, or what it returned last if that was for the same tensors, unchanged."""
        versions = tuple(t._version for t in key)
        if self._entry is not None:
            held, held_versions, value = self._entry
            if len(held) == len(key) and all(a is b for a, b in zip(held, key)) and held_versions == versions:
                return value
        value = compute()
        self._entry = (key, versions, value)
        return value

    def clear(self) -> None:
        self._entry = None


def begin_batch(collectors, size: int, mask: torch.Tensor | None, shared: SharedInputs) -> None:
    """Ready ``collectors`` for a batch of ``size`` examples with token ``mask`` (bool, (batch, T) or None):
    their loss scale and mask set, and ``shared`` (emptied) handed to the collectors that share input products."""
    shared.clear()
    for c in collectors:
        c.scale, c.mask = float(size), mask
        if hasattr(c, "shared"):
            c.shared = shared


def _once(shared: SharedInputs | None, key: tuple, compute):
    return compute() if shared is None else shared.get(key, compute)


def select_tokens(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``t`` (batch, T, features) or (batch, features) at the real tokens of ``mask`` (batch, T): (n, features)."""
    t = t.reshape(t.shape[0], -1, t.shape[-1])
    if mask is not None and mask.shape == t.shape[:2]:
        return t[mask.to(t.device)]
    return t.reshape(-1, t.shape[-1])


def window_folds(t: torch.Tensor, first: int) -> torch.Tensor:
    """The fold of each token of ``t`` (batch, T, features) or (batch, features): ``(first + j) mod FOLDS`` for
    window ``j`` of the batch, shaped (batch, T, 1) for :func:`select_tokens`."""
    batch = t.shape[0]
    length = t.reshape(batch, -1, t.shape[-1]).shape[1]
    folds = torch.arange(first, first + batch, device=t.device) % FOLDS
    return folds[:, None, None].expand(batch, length, 1)


def shape_gradients(g: torch.Tensor, edge: float, clip: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Output gradients ``g`` (batch, T, out) with the first and last ``floor(edge T)`` tokens of each window zeroed
    and, for ``clip > 0``, each token's norm capped at ``clip`` times the median norm of the batch's real tokens."""
    cut = int(edge * g.shape[1])
    if cut:
        g = g.clone()
        g[:, :cut] = 0
        g[:, g.shape[1] - cut :] = 0
    if clip > 0:
        norms = g.norm(dim=-1)  # (batch, T)
        real = norms[mask.to(g.device)] if mask is not None and mask.shape == norms.shape else norms.flatten()
        real = real[real > 0]
        if real.numel():
            cap = clip * real.median()
            g = g * (cap / norms.clamp(min=cap)).unsqueeze(-1)
    return g


class MomentCollector:
    """Hooks accumulating ``sum x x^T``, ``sum |x|`` (token-masked) and, with ``gradients``, ``sum g g^T``
    (shaped by ``settings.grad_edge`` / ``settings.grad_clip``, :func:`shape_gradients`)."""

    def __init__(self, module: nn.Linear, gradients: bool, settings: StatisticsSettings = DEFAULT):
        out_features, in_features = module.weight.shape
        device = module.weight.device
        self.xx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.abs = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.gg = torch.zeros(out_features, out_features, dtype=torch.float64, device=device) if gradients else None
        self.tokens = torch.zeros(1, dtype=torch.float64, device=device)
        self.mask: torch.Tensor | None = None  # (batch, T) bool of real tokens, set before each forward
        self.scale = 1.0  # batch size: the batch loss is a mean over examples
        self.edge, self.clip = settings.grad_edge, settings.grad_clip
        self.shared: SharedInputs | None = None  # set by begin_batch
        self.handle = module.register_forward_hook(self._forward)

    def _products(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = select_tokens(t.detach(), self.mask).double()
        return x.T @ x, x.abs().sum(dim=0), x.shape[0]

    def _forward(self, module, inputs, output):
        xx, abs_sum, tokens = _once(self.shared, (inputs[0],), lambda: self._products(inputs[0]))
        self.xx.add_(xx)
        self.abs.add_(abs_sum)
        self.tokens += tokens
        if self.gg is not None and output.requires_grad:
            output.register_hook(self._backward)

    def _backward(self, g: torch.Tensor) -> None:
        g = g.detach()
        if self.edge or self.clip:
            g = shape_gradients(g.reshape(g.shape[0], -1, g.shape[-1]), self.edge, self.clip, self.mask)
        g = select_tokens(g, self.mask).double() * self.scale
        self.gg.addmm_(g.T, g)

    def accumulators(self) -> list[torch.Tensor]:
        return [self.xx, self.abs, self.tokens] + ([self.gg] if self.gg is not None else [])

    def result(self, examples: int) -> dict[str, torch.Tensor]:
        tokens = max(float(self.tokens), 1.0)
        out = {"input_moment": (self.xx / tokens).float().cpu(), "input_abs_mean": (self.abs / tokens).float().cpu()}
        if self.gg is not None:
            out["grad_moment"] = (self.gg / max(examples, 1)).float().cpu()
        return out

    def remove(self) -> None:
        self.handle.remove()


class CrossMomentCollector:
    """Hooks pairing a Linear's dense input ``x`` with its compressed-model input ``x_hat`` on the same tokens.

    The block sweep runs each batch twice: with ``phase = "dense"`` the hook keeps ``x``; with
    ``phase = "compressed"`` it accumulates ``sum x_hat x_hat^T`` and ``sum x x_hat^T`` (token-masked) against
    the ``x`` kept for that batch, separately for each of :data:`FOLDS` folds of the calibration windows (window
    ``j`` of the sample in fold ``j mod FOLDS``), so a correction fitted on some folds can be checked on the others
    (:func:`lowrank.methods.compensated.validated_correction`). Memory: O(FOLDS in^2) per layer plus one batch of
    inputs."""

    def __init__(self, module: nn.Linear, gradients: bool, settings: StatisticsSettings = DEFAULT):
        in_features = module.weight.shape[1]
        device = module.weight.device
        self.cross = torch.zeros(FOLDS, in_features, in_features, dtype=torch.float64, device=device)
        self.moment = torch.zeros(FOLDS, in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(FOLDS, dtype=torch.float64, device=device)
        self.windows = 0  # windows accumulated so far: the first window of the next batch is window ``windows``
        self.mask: torch.Tensor | None = None
        self.scale = 1.0
        self.phase = "dense"
        self.dense: torch.Tensor | None = None
        self.shared: SharedInputs | None = None  # set by begin_batch
        self.handle = module.register_forward_hook(self._forward)

    def _products(self, dense: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat = select_tokens(t.detach(), self.mask).double()
        if dense.shape[0] != x_hat.shape[0]:
            raise RuntimeError("a compressed-model input came without the dense input of the same batch")
        fold = select_tokens(window_folds(t, self.windows), self.mask).reshape(-1)
        moment, cross = torch.zeros_like(self.moment), torch.zeros_like(self.cross)
        tokens = torch.zeros_like(self.tokens)
        for k in range(FOLDS):
            rows = fold == k
            x_k, dense_k = x_hat[rows], dense[rows]
            moment[k], cross[k], tokens[k] = x_k.T @ x_k, dense_k.T @ x_k, x_k.shape[0]
        return moment, cross, tokens

    def _forward(self, module, inputs, output):
        t = inputs[0]
        if self.phase == "dense":
            self.dense = _once(self.shared, (t,), lambda: select_tokens(t.detach(), self.mask).double())
            return
        if self.dense is None:
            raise RuntimeError("a compressed-model input came without the dense input of the same batch")
        dense = self.dense
        moment, cross, tokens = _once(self.shared, (dense, t), lambda: self._products(dense, t))
        self.moment.add_(moment)
        self.cross.add_(cross)
        self.tokens.add_(tokens)
        self.windows += t.shape[0]
        self.dense = None

    def accumulators(self) -> list[torch.Tensor]:
        return [self.cross, self.moment, self.tokens]

    def result(self, examples: int) -> dict[str, torch.Tensor]:
        tokens = max(float(self.tokens.sum()), 1.0)
        per_fold = self.tokens.clamp(min=1.0)[:, None, None]
        return {
            "cross_moment": (self.cross.sum(0) / tokens).float().cpu(),
            "compressed_moment": (self.moment.sum(0) / tokens).float().cpu(),
            "fold_cross_moment": (self.cross / per_fold).float().cpu(),
            "fold_compressed_moment": (self.moment / per_fold).float().cpu(),
            "fold_tokens": self.tokens.float().cpu(),
        }

    def remove(self) -> None:
        self.handle.remove()
