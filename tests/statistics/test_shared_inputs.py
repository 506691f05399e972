"""Linears called in turn on one tensor (q/k/v, gate/up) share its float64 products: the moments are those each
Linear computes alone, and each distinct input is multiplied once per batch."""

from __future__ import annotations

import torch

from lowrank.models.architectures import compressible_linears
from lowrank.statistics import DEFAULT
from lowrank.statistics.moments import CrossMomentCollector, MomentCollector, SharedInputs, begin_batch


def batch_of(tiny_llama, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (3, 12), generator=generator)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 8:] = False  # padding is left out of every moment
    return ids, mask


def collect(tiny_llama, make, shared: SharedInputs | None, phases=("dense",)) -> dict:
    linears = compressible_linears(tiny_llama.model)
    collectors = {name: make(module, False, DEFAULT) for name, module in linears.items()}
    try:
        with torch.no_grad():
            for seed in (0, 1):
                ids, mask = batch_of(tiny_llama, seed)
                if shared is None:
                    for c in collectors.values():
                        c.scale, c.mask = float(ids.shape[0]), mask
                else:
                    begin_batch(collectors.values(), ids.shape[0], mask, shared)
                for k, phase in enumerate(phases):
                    for c in collectors.values():
                        c.phase = phase
                    if shared is not None:
                        shared.clear()
                    # the second stream's input differs from the first's (as the compressed model's does)
                    embeds = tiny_llama.model.get_input_embeddings()(ids) * (1.0 + 0.25 * k)
                    tiny_llama.model(inputs_embeds=embeds, attention_mask=mask.long())
    finally:
        for c in collectors.values():
            c.remove()
    return {name: c.result(6) for name, c in collectors.items()}


def count_products(monkeypatch) -> list[int]:
    calls = []
    original = SharedInputs.get

    def counted(self, key, compute):
        def counting():
            calls.append(1)
            return compute()

        return original(self, key, counting)

    monkeypatch.setattr(SharedInputs, "get", counted)
    return calls


def test_shared_input_moments_equal_each_linears_own(tiny_llama, monkeypatch):
    alone = collect(tiny_llama, MomentCollector, None)
    calls = count_products(monkeypatch)
    shared = collect(tiny_llama, MomentCollector, SharedInputs())
    for name, stats in alone.items():
        for key, value in stats.items():
            torch.testing.assert_close(shared[name][key], value, rtol=1e-6, atol=1e-7)
    layers = compressible_linears(tiny_llama.model)
    blocks = tiny_llama.model.config.num_hidden_layers
    # per block and batch: q/k/v one input, o one, gate/up one, down one
    assert len(calls) == 2 * blocks * 4 < 2 * len(layers)


def test_shared_cross_moments_equal_each_linears_own(tiny_llama, monkeypatch):
    alone = collect(tiny_llama, CrossMomentCollector, None, ("dense", "compressed"))
    calls = count_products(monkeypatch)
    shared = collect(tiny_llama, CrossMomentCollector, SharedInputs(), ("dense", "compressed"))
    for name, stats in alone.items():
        assert not torch.equal(stats["cross_moment"], stats["compressed_moment"])  # two different streams
        for key, value in stats.items():
            torch.testing.assert_close(shared[name][key], value, rtol=1e-6, atol=1e-7)
    blocks = tiny_llama.model.config.num_hidden_layers
    assert len(calls) == 2 * 2 * blocks * 4  # batches x streams x blocks x distinct inputs


def test_a_tensor_changed_in_place_is_another_input():
    shared = SharedInputs()
    x = torch.ones(3)
    assert shared.get((x,), lambda: "first") == "first"
    assert shared.get((x,), lambda: "again") == "first"
    x.mul_(2)
    assert shared.get((x,), lambda: "changed") == "changed"
    assert shared.get((torch.ones(3),), lambda: "other") == "other"  # equal values, another tensor
    shared.clear()
    assert shared.get((x,), lambda: "cleared") == "cleared"
