import pytest
import torch
import torch.nn.functional as F

from lowrank import LowRankLinear, compress, compressible_linears, load_compressed, save_compressed
from lowrank.data.tasks import load_task
from lowrank.training.finetune import TrainConfig, train
from lowrank.training.mixed import (
    MixedRankAnnealing,
    MixedRankLinear,
    anneal,
    finalize,
    mixed_rank_layers,
    to_mixed_rank,
)
from lowrank.training.prune import apply_masks, compute_masks

FAST = TrainConfig(epochs=1.0, lr=1e-3, batch_size=8, max_length=16, max_steps=8)


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


def layer(out_f=12, in_f=20, rank=4, p=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    mask = torch.rand(out_f, in_f, generator=g) > 0.5
    U, V = torch.randn(out_f, rank, generator=g), torch.randn(rank, in_f, generator=g)
    return MixedRankLinear(U, V, W, mask, torch.randn(out_f, generator=g), p=p), W, mask


def test_mixed_layer_equals_low_rank_at_p0_and_sparse_at_p1():
    mixed, W, mask = layer()
    x = torch.randn(5, 20)
    low = LowRankLinear(mixed.U, mixed.V, mixed.bias)
    mixed.train()
    mixed.p = 0.0
    for _ in range(5):
        assert torch.allclose(mixed(x), low(x), atol=1e-6)
    mixed.p = 1.0
    for _ in range(5):
        assert torch.allclose(mixed(x), F.linear(x, W * mask, mixed.bias), atol=1e-6)
    mixed.eval()  # eval mode always runs the low-rank path
    assert torch.allclose(mixed(x), low(x), atol=1e-6)
    assert (mixed.weight[~mask] == 0).all()  # the sparse weight is stored masked


def test_mixed_layer_samples_both_paths_at_half():
    torch.manual_seed(0)
    mixed, W, mask = layer(p=0.5)
    mixed.train()
    x = torch.randn(3, 20)
    sparse = F.linear(x, W * mask, mixed.bias)
    hits = sum(torch.allclose(mixed(x), sparse, atol=1e-6) for _ in range(400))
    assert 150 < hits < 250


def test_sparse_weight_stays_masked_while_training():
    mixed, W, mask = layer(p=1.0)
    mixed.train()
    optimizer = torch.optim.AdamW(mixed.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(10):
        optimizer.zero_grad()
        mixed(torch.randn(8, 20)).square().mean().backward()
        optimizer.step()
    assert (mixed.weight[~mask] == 0).all()
    assert not torch.allclose(mixed.weight[mask], W[mask])  # the kept entries did train


def test_anneal_schedules():
    assert anneal(0, 100, 0.5) == 0.5 and anneal(100, 100, 0.5) == 0.0
    assert anneal(50, 100, 0.5) == pytest.approx(0.25)
    assert anneal(50, 100, 0.5, "cosine") == pytest.approx(0.25)
    assert anneal(25, 100, 0.4, "cosine") == pytest.approx(0.4 * (1 + 2**-0.5) / 2)
    assert anneal(80, 100, 0.5, until=0.8) == 0.0 and anneal(90, 100, 0.5, until=0.8) == 0.0
    for schedule in ("linear", "cosine"):
        values = [anneal(k, 40, 0.5, schedule) for k in range(41)]
        assert all(b <= a for a, b in zip(values, values[1:]))
    for bad in (dict(schedule="step"), dict(p0=1.5), dict(until=0.0)):
        with pytest.raises(ValueError):
            anneal(1, 10, **{"p0": 0.5, **bad})


def pruned_and_mixed(tiny_bert, keep=0.5, sparsity=0.5):
    """Magnitude-prune the tiny BERT in place, factorize it, and make its factorized layers mixed-rank."""
    linears = compressible_linears(tiny_bert.model)
    masks = compute_masks({n: m.weight.detach().abs() for n, m in linears.items()}, sparsity, "layer")
    apply_masks(tiny_bert.model, masks)
    small = compress(tiny_bert, keep)
    weights = {n: m.weight.detach() for n, m in linears.items()}
    return small, to_mixed_rank(small.model, weights, masks), masks


def test_annealing_reaches_zero_and_both_paths_train(tiny_bert, sentiment_csv):
    small, mixed, masks = pruned_and_mixed(tiny_bert)
    assert len(mixed) == 12 and not any(isinstance(m, LowRankLinear) for m in small.model.modules())
    before = {n: (m.U.detach().clone(), m.weight.detach().clone()) for n, m in mixed.items()}
    hook = MixedRankAnnealing(p0=0.5, schedule="cosine")
    train(small.model, small.tokenizer, load_task(sentiment_csv), FAST, hooks=[hook])
    assert len(hook.history) == FAST.max_steps and hook.history[-1] == 0.0
    assert all(b <= a for a, b in zip(hook.history, hook.history[1:]))
    assert all(m.p == 0.0 for m in mixed_rank_layers(small.model).values())
    assert any(not torch.equal(before[n][0], m.U) for n, m in mixed.items())  # low-rank paths trained
    assert any(not torch.equal(before[n][1], m.weight) for n, m in mixed.items())  # sparse paths trained
    assert all((m.weight[~masks[n]] == 0).all() for n, m in mixed.items())


def test_finalize_save_load_round_trip(tiny_bert, sentiment_csv, tmp_path):
    small, mixed, _ = pruned_and_mixed(tiny_bert, keep=0.3)
    train(small.model, small.tokenizer, load_task(sentiment_csv), FAST, hooks=[MixedRankAnnealing(0.5)])
    eval_logits = logits(small)  # eval mode: the low-rank path
    assert finalize(small.model) == 12
    assert (
        not mixed_rank_layers(small.model)
        and len([m for m in small.model.modules() if isinstance(m, LowRankLinear)]) == 12
    )
    assert torch.equal(logits(small), eval_logits)
    assert small.model.lowrank_info.ranks == {n: m.rank for n, m in mixed.items()}
    save_compressed(small, tmp_path / "out")
    again = load_compressed(tmp_path / "out")
    assert (logits(again) - logits(small)).abs().max().item() <= 1e-5


def test_to_mixed_rank_needs_every_pruned_weight(tiny_bert):
    small = compress(tiny_bert, 0.5)
    with pytest.raises(ValueError, match="no pruned weight"):
        to_mixed_rank(small.model, {}, {})
    with pytest.raises(ValueError, match="MixedRankLinear"):
        MixedRankAnnealing().on_start(small.model, 10)
