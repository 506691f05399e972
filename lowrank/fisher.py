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
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

import torch
from torch import nn

from .architectures import compressible_linears
from .assets import atomic_write_bytes, cache_dir
from .data import batches, load_task, num_batches as count_batches
from .progress import Progress, report


class _PerExampleSquaredGrads:
    """Hooks accumulating ``sum_n (g_n^T x_n)^2`` for one Linear layer."""

    def __init__(self, module: nn.Linear, scale: float):
        self.total = torch.zeros_like(module.weight, dtype=torch.float32)
        self.scale = scale
        self.handle = module.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        x = inputs[0].detach()
        if output.requires_grad:
            output.register_hook(lambda g: self._backward(x, g))

    def _backward(self, x: torch.Tensor, g: torch.Tensor) -> None:
        x, g = x.reshape(x.shape[0], -1, x.shape[-1]).float(), g.reshape(g.shape[0], -1, g.shape[-1]).float()
        for n in range(x.shape[0]):
            grad = g[n].T @ x[n] * self.scale  # (out, in): gradient of example n's own loss
            self.total.add_(grad.square_())

    def remove(self) -> None:
        self.handle.remove()


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

    if labels not in ("data", "sampled"):
        raise ValueError(f"labels must be 'data' or 'sampled', got {labels!r}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError("num_batches and batch_size must be positive")
    task = load_task(task)
    settings = {"num_batches": num_batches, "batch_size": batch_size, "max_length": max_length, "labels": labels,
                "split": split, "seed": seed}
    path = fisher_cache_path(loaded, task, settings)
    if use_cache and path.exists():
        return load_file(str(path))
    model = loaded.model
    linears = compressible_linears(model)
    if not linears:
        raise ValueError(f"{loaded.name} has no compressible Linear layers")
    total = min(num_batches, count_batches(task, loaded.tokenizer, split, batch_size, max_length))
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deployed function
    collectors = {name: _PerExampleSquaredGrads(module, 1.0) for name, module in linears.items()}
    examples = 0
    try:
        device = loaded.device
        for step, batch in enumerate(batches(task, loaded.tokenizer, split, batch_size, max_length, shuffle=True,
                                             seed=seed, limit=total)):
            size = batch["input_ids"].shape[0]
            for c in collectors.values():  # the batch loss is a mean over examples: rescale to per-example
                c.scale = float(size)
            model.zero_grad(set_to_none=True)
            _loss(loaded, {k: v.to(device) for k, v in batch.items()}, labels, generator).backward()
            examples += size
            report(progress, step + 1, total, "estimating Fisher information")
    finally:
        for c in collectors.values():
            c.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    fisher = {name: (c.total / examples).cpu() for name, c in collectors.items()}
    if use_cache:
        atomic_write_bytes(path, save(fisher, metadata={k: str(v) for k, v in settings.items()}))
    return fisher
