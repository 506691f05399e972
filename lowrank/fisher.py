"""Empirical Fisher information of every compressible Linear weight.

For a weight ``W`` (out, in) and per-example loss ``l_n``::

    F_ij = (1 / N) sum_n (d l_n / d W_ij)^2

the average over ``N`` training examples of the squared per-example gradient (the
diagonal of the empirical Fisher). ``l_n`` is the cross-entropy of example ``n``
(classification, with its label, or with a label sampled from the model's own
prediction when ``labels="sampled"``: the true Fisher), or the mean next-token loss of
one token block (causal LM).

Per-example gradients come from hooks, without per-batch copies of the gradient: a
forward hook keeps the layer input ``x_n`` (T, in) and a tensor hook on the output
receives ``g_n = d l / d y_n`` (T, out); then ``dl_n/dW = g_n^T x_n`` is formed one
example at a time, squared and added to a running sum. Memory is O(parameters) plus one
(out, in) scratch matrix; cost is about one extra backward pass.

Results are cached on disk (safetensors) under ``<cache>/fisher/``, keyed by the model's
weights, the task and the sampling settings.

:func:`loss_change_taylor` uses the same per-example pass for a given change ``dW`` of each
layer (e.g. a truncation residual): with the per-example directional derivative
``s_n = <dl_n/dW, dW> = sum_t g_nt^T dW x_nt``, the second-order estimate of the loss change
with the *full* (not diagonal) empirical Fisher as the Hessian is::

    dL ~= mean_n s_n + 0.5 * mean_n s_n^2          (first-order term, Fisher quadratic form)

The diagonal approximation ``0.5 sum_ij F_ij dW_ij^2 = 0.5 mean_n sum_ij (G_n,ij dW_ij)^2``
drops the cross terms of the square; the full form keeps them (correlated inputs, tokens).
Cost: one forward/backward pass plus one extra ``(tokens, in) x (in, out)`` product per layer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

import torch
from torch import nn

from .architectures import compressible_linears
from .assets import atomic_write_bytes, cache_dir
from .compress import resolve_ranks
from .data import batches, load_task, num_batches as count_batches
from .factorize import truncated_svd
from .progress import Progress, report


class _PerExampleCollector:
    """Hooks handing each Linear's per-example ``(x_n, g_n)`` (both (T, features)) to ``consume``."""

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


class _SquaredGrads(_PerExampleCollector):
    """Accumulates ``sum_n (g_n^T x_n)^2``, one (out, in) example gradient at a time."""

    def __init__(self, module: nn.Linear):
        super().__init__(module)
        self.total = torch.zeros_like(module.weight, dtype=torch.float32)

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        for n in range(x.shape[0]):
            self.total.add_((g[n].T @ x[n]).square_())


class _DirectionalDerivatives(_PerExampleCollector):
    """Collects ``s_n = sum_t g_nt^T dW x_nt`` for a fixed change ``dW`` (out, in)."""

    def __init__(self, module: nn.Linear, delta: torch.Tensor):
        super().__init__(module)
        self.delta = delta.to(module.weight.device, torch.float32)
        self.values: list[torch.Tensor] = []

    def consume(self, x: torch.Tensor, g: torch.Tensor) -> None:
        self.values.append(((x @ self.delta.T) * g).sum(dim=(1, 2)).double().cpu())


def _loss(loaded, batch: dict, labels: str, generator: torch.Generator) -> torch.Tensor:
    if labels == "sampled" and loaded.kind == "classifier":
        out = loaded.model(**{k: v for k, v in batch.items() if k != "labels"})
        probs = out.logits.detach().float().softmax(-1)
        sampled = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
        return nn.functional.cross_entropy(out.logits, sampled)
    return loaded.model(**batch).loss


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every compressible weight's shape and a strided sample of its values."""
    digest = hashlib.sha1()
    for name, module in compressible_linears(model).items():
        w = module.weight.detach().flatten()
        digest.update(name.encode())
        digest.update(str(tuple(module.weight.shape)).encode())
        digest.update(w[:: max(1, w.numel() // 4096)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def fisher_cache_path(loaded, task, settings: dict):
    key = json.dumps({"model": loaded.name, "weights": weights_fingerprint(loaded.model), "task": task.name,
                      "task_source": task.source, "sizes": task.sizes(), **settings}, sort_keys=True)
    return cache_dir() / "fisher" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"


def estimate_fisher(loaded, task, num_batches: int = 32, batch_size: int = 16, max_length: int = 128,
                    labels: str = "data", split: str = "train", seed: int = 0, use_cache: bool = True,
                    progress: Optional[Progress] = None) -> dict[str, torch.Tensor]:
    """``{module_name: F}`` with ``F`` (out, in) the empirical Fisher of each compressible Linear weight.

    ``num_batches`` x ``batch_size`` examples of ``split`` (shuffled with ``seed``);
    ``labels``: ``"data"`` (task labels / next tokens) or ``"sampled"`` (labels drawn from
    the model's prediction; classifiers only). Tensors are float32 on the CPU.
    """
    from safetensors.torch import load_file, save

    _check_sampling(labels, num_batches, batch_size)
    task = load_task(task)
    settings = {"num_batches": num_batches, "batch_size": batch_size, "max_length": max_length, "labels": labels,
                "split": split, "seed": seed}
    path = fisher_cache_path(loaded, task, settings)
    if use_cache and path.exists():
        return load_file(str(path))
    linears = compressible_linears(loaded.model)
    if not linears:
        raise ValueError(f"{loaded.name} has no compressible Linear layers")
    collectors = {name: _SquaredGrads(module) for name, module in linears.items()}
    examples = _per_example_pass(loaded, task, collectors, num_batches, batch_size, max_length, labels, split, seed,
                                 progress, "estimating Fisher information")
    fisher = {name: (c.total / examples).cpu() for name, c in collectors.items()}
    if use_cache:
        atomic_write_bytes(path, save(fisher, metadata={k: str(v) for k, v in settings.items()}))
    return fisher


def _check_sampling(labels: str, num_batches: int, batch_size: int) -> None:
    if labels not in ("data", "sampled"):
        raise ValueError(f"labels must be 'data' or 'sampled', got {labels!r}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError("num_batches and batch_size must be positive")


def _per_example_pass(loaded, task, collectors: dict[str, _PerExampleCollector], num_batches: int, batch_size: int,
                      max_length: int, labels: str, split: str, seed: int, progress: Optional[Progress],
                      message: str) -> int:
    """Backward passes over ``num_batches`` shuffled batches feeding ``collectors``; returns the example count.

    The model runs in eval mode (no dropout: the deployed function); its gradients are cleared after."""
    model = loaded.model
    total = min(num_batches, count_batches(task, loaded.tokenizer, split, batch_size, max_length))
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    examples = 0
    try:
        for step, batch in enumerate(batches(task, loaded.tokenizer, split, batch_size, max_length, shuffle=True,
                                             seed=seed, limit=total)):
            size = batch["input_ids"].shape[0]
            for c in collectors.values():
                c.scale = float(size)
            model.zero_grad(set_to_none=True)
            _loss(loaded, {k: v.to(loaded.device) for k, v in batch.items()}, labels, generator).backward()
            examples += size
            report(progress, step + 1, total, message)
    finally:
        for c in collectors.values():
            c.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return examples


def loss_change_taylor(loaded, task, deltas: dict[str, torch.Tensor], num_batches: int = 32, batch_size: int = 16,
                       max_length: int = 128, labels: str = "data", split: str = "train", seed: int = 0,
                       progress: Optional[Progress] = None) -> dict[str, dict[str, float]]:
    """Second-order estimate of the loss change from ``W <- W + dW``, for each layer of ``deltas`` *alone*.

    ``deltas``: ``{module_name: dW}`` with ``dW`` shaped like the weight (for a rank-r
    approximation ``W_hat``, ``dW = W_hat - W``). Returns per layer ``first_order``
    (``mean_n s_n``), ``second_order`` (``0.5 mean_n s_n^2``, the full empirical-Fisher
    quadratic form) and ``total`` (their sum); see the module docstring. Same sampling
    arguments as :func:`estimate_fisher` (not cached: it depends on ``dW``).
    """
    _check_sampling(labels, num_batches, batch_size)
    task = load_task(task)
    linears = compressible_linears(loaded.model)
    unknown = sorted(set(deltas) - set(linears))
    if unknown:
        raise ValueError(f"not compressible Linear layers of {loaded.name}: {unknown[:3]}")
    for name, delta in deltas.items():
        if tuple(delta.shape) != tuple(linears[name].weight.shape):
            raise ValueError(f"{name}: change shape {tuple(delta.shape)} != weight {tuple(linears[name].weight.shape)}")
    collectors = {name: _DirectionalDerivatives(linears[name], delta) for name, delta in deltas.items()}
    _per_example_pass(loaded, task, collectors, num_batches, batch_size, max_length, labels, split, seed, progress,
                      "Taylor estimate of the loss change")
    estimates = {}
    for name, c in collectors.items():
        s = torch.cat(c.values)
        first, second = float(s.mean()), 0.5 * float(s.square().mean())
        estimates[name] = {"first_order": first, "second_order": second, "total": first + second}
    return estimates


def svd_loss_change(loaded, task, ranks, **sampling) -> dict[str, dict[str, float]]:
    """:func:`loss_change_taylor` of each layer's plain truncated-SVD residual ``dW = SVD_r(W) - W``.

    ``ranks``: ``{layer: rank}`` or a kept fraction, validated as in :func:`lowrank.compress`.
    The best-ranking predictor of the SVD drop in ``benchmarks/predictor.py``: with
    ``split="train"`` it needs no held-out data; computed on a labelled held-out split
    (``split=``, disjoint from the data it is judged on) its first-order term also sees the
    generalization gap. ``sampling``: the sampling arguments of :func:`loss_change_taylor`.
    Cost: one truncated SVD per layer plus one per-example pass.
    """
    linears = compressible_linears(loaded.model)
    deltas = {}
    for name, rank in resolve_ranks(loaded.model, ranks).items():
        W = linears[name].weight.detach().float()
        U, V = truncated_svd(W, rank)
        deltas[name] = U @ V - W
    return loss_change_taylor(loaded, task, deltas, **sampling)
