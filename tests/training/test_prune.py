import json

import pytest
import torch
from torch import nn

from lowrank import compressible_linears, load_model
from lowrank.cli.main import main
from lowrank.training.finetune import TrainConfig, TrainingHook
from lowrank.training.prune import (
    PruningHook,
    compute_masks,
    cubic_sparsity,
    kth_smallest,
    load_masks,
    mask_sparsity,
    prune,
    save_pruned,
    top_mask,
)

FAST = TrainConfig(epochs=1.0, lr=1e-3, batch_size=8, max_length=16, max_steps=10)


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


# ----------------------------------------------------------------------------- schedule


def test_cubic_schedule_start_warmup_end_and_monotone():
    total, final = 100, 0.8
    values = [cubic_sparsity(k, total, final, warmup=0.1, cooldown=0.2) for k in range(total + 1)]
    assert values[0] == 0.0 and values[10] == 0.0  # warm-up: steps 0..t_w = 10
    assert values[11] > 0.0
    assert all(v == final for v in values[80:])  # cool-down: held at target from t_e = 80
    assert values[79] < final
    assert all(b >= a for a, b in zip(values, values[1:]))
    # the exact cubic form halfway through the pruning phase: s_f (1 - (1 - 1/2)^3)
    assert values[45] == pytest.approx(final * (1 - 0.5**3))
    assert cubic_sparsity(50, 100, 0.9, initial=0.3, warmup=0.0, cooldown=0.0) == pytest.approx(0.9 - 0.6 * 0.125)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(final=1.0),
        dict(final=0.5, initial=0.6),
        dict(final=0.5, warmup=0.6, cooldown=0.4),
        dict(final=0.5, warmup=-0.1),
    ],
)
def test_cubic_schedule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cubic_sparsity(1, 100, **kwargs)


# ----------------------------------------------------------------------------- thresholds


def test_kth_smallest_is_exact_on_large_inputs_with_ties():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(400_000, generator=g), torch.zeros(100_000)])
    values = values[torch.randperm(len(values), generator=g)]
    for k in (1, 1000, 200_000, 250_000, 300_000, 499_999, 500_000):
        assert kth_smallest(values, k) == values.kthvalue(k).values


def test_top_mask_prunes_exactly_even_with_ties():
    scores = torch.zeros(10, 10)
    scores[0, :3] = 1.0
    mask = top_mask(scores, 0.75)
    assert int((~mask).sum()) == 75
    assert mask[0, :3].all()  # the highest scores are kept
    assert top_mask(scores, 0.0).all()


def test_global_versus_layer_threshold():
    g = torch.Generator().manual_seed(0)
    scores = {"small": torch.rand(30, 40, generator=g), "large": 3 * torch.rand(50, 20, generator=g)}
    layer = compute_masks(scores, 0.6, "layer")
    for name, s in scores.items():
        assert int((~layer[name]).sum()) == int(0.6 * s.numel())
    glob = compute_masks(scores, 0.6, "global")
    assert mask_sparsity(glob) == pytest.approx(int(0.6 * 2200) / 2200)
    # one threshold: the small-scale layer loses far more than the large-scale one
    assert 1 - glob["small"].float().mean() > 0.8 and 1 - glob["large"].float().mean() < 0.35
    kept_min = min(scores[n][glob[n]].min() for n in scores)
    pruned_max = max(scores[n][~glob[n]].max() for n in scores)
    assert kept_min >= pruned_max
    with pytest.raises(ValueError, match="scope"):
        compute_masks(scores, 0.5, "row")


# ----------------------------------------------------------------------------- hook on toy problems


FIRST_ORDER_UPDATES = {"movement": lambda d, g: -d * g, "taylor": lambda d, g: (d * g).abs()}


@pytest.mark.parametrize("method", FIRST_ORDER_UPDATES)
def test_first_order_scores_accumulate_their_update_of_the_dense_weight(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    steps = 12
    hook = PruningHook(method, sparsity=0.5, scope="layer", warmup=0.25, cooldown=0.25)
    hook.on_start(model, steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    linears = compressible_linears(model)
    expected = {n: torch.zeros_like(m.weight) for n, m in linears.items()}
    # D: the weight as trained where kept, frozen at its value when pruned (module docstring)
    dense = {n: m.weight.detach().clone() for n, m in linears.items()}
    for step in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for name, module in linears.items():
            expected[name] += FIRST_ORDER_UPDATES[method](dense[name], module.weight.grad)
        hook.after_backward(model, step)
        optimizer.step()
        for name, module in linears.items():
            dense[name] = torch.where(hook.masks[name], module.weight.detach(), dense[name])
        hook.after_step(model, step)
        for name, module in linears.items():
            assert torch.equal(module.weight, dense[name] * hook.masks[name])
    for name in expected:
        assert torch.allclose(hook.scores[name], expected[name], atol=1e-6)
        assert int((~hook.masks[name]).sum()) == int(0.5 * expected[name].numel())
    assert hook.history[-1] == pytest.approx(0.5)
    assert hook.history[2] == 0.0 and hook.history[3] > 0.0  # warm-up: 3 steps


def test_movement_scores_without_pruning_are_minus_sum_of_weight_times_grad():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7))
    x, y = torch.randn(16, 5), torch.randn(16, 7)
    hook = PruningHook("movement", sparsity=0.5, warmup=0.8, cooldown=0.1)
    hook.on_start(model, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = torch.zeros(7, 5)
    for step in range(8):  # all within the warm-up: nothing pruned, D = W
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        expected -= model[0].weight.detach() * model[0].weight.grad
        hook.after_backward(model, step)
        optimizer.step()
        hook.after_step(model, step)
    assert torch.allclose(hook.scores["0"], expected, atol=1e-6) and hook.masks["0"].all()


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_adam_normalized_movement_scores_ignore_the_gradient_scale(scale):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7))
    x, y = torch.randn(16, 5), torch.randn(16, 7)
    hook = PruningHook("movement", sparsity=0.5, warmup=0.8, cooldown=0.1, score_update="adam")
    hook.on_start(model, 10)
    for step in range(6):  # fixed weights: the same u = W * grad every step, so m_hat = u, v_hat = u^2
        model.zero_grad()
        (scale * (model(x) - y).square().mean()).backward()
        u = model[0].weight.detach() * model[0].weight.grad
        hook.after_backward(model, step)
    assert torch.allclose(hook.scores["0"], -6 * torch.sign(u), atol=1e-4)  # each step moves a score by ~1
    with pytest.raises(ValueError, match="score_update"):
        PruningHook("movement", 0.5, score_update="sgd")


def test_pruned_movement_weight_returns_with_its_value():
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -2.0]]))
    hook = PruningHook("movement", sparsity=0.5, scope="layer", warmup=0.0, cooldown=0.0)
    hook.on_start(model, 1)
    hook.scores["0"] = torch.tensor([[1.0, 0.0]])
    hook.after_step(model, 0)
    assert model[0].weight.tolist() == [[0.5, 0.0]]  # the second weight is pruned...
    model[0].weight.grad = torch.tensor([[0.0, 4.0]])  # ...and the loss wants it back (towards -2)
    hook.after_backward(model, 1)
    assert hook.scores["0"].tolist() == [[1.0, 8.0]]  # S -= D * grad with D = -2 (its frozen value)
    hook.after_step(model, 1)
    assert model[0].weight.tolist() == [[0.0, -2.0]]  # it returns with its old value


def test_taylor_prunes_the_weights_the_loss_does_not_depend_on():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 4, bias=False))
    x = torch.randn(64, 6)
    x[:, 3:] *= 1e-3  # the last three inputs barely reach the output
    y = x[:, :3] @ torch.randn(3, 4)
    hook = PruningHook("taylor", sparsity=0.5, scope="layer", warmup=0.5, cooldown=0.25)
    hook.on_start(model, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(8):
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        hook.after_backward(model, step)
        optimizer.step()
        hook.after_step(model, step)
    assert (hook.scores["0"] >= 0).all()
    assert hook.masks["0"][:, :3].all() and not hook.masks["0"][:, 3:].any()
    assert (model[0].weight[:, 3:] == 0).all()


def test_magnitude_keeps_the_largest_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10))
    hook = PruningHook("magnitude", sparsity=0.7, scope="global", warmup=0.0, cooldown=0.0)
    hook.on_start(model, 1)
    before = model[0].weight.detach().abs().clone()
    hook.after_step(model, 0)
    mask = hook.masks["0"]
    assert int((~mask).sum()) == 70
    assert before[mask].min() >= before[~mask].max()
    assert (model[0].weight[~mask] == 0).all()


@pytest.mark.parametrize("bad", [dict(method="random"), dict(scope="row"), dict(sparsity=1.0), dict(sparsity=0.0)])
def test_hook_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        PruningHook(**{"method": "movement", "sparsity": 0.5, "scope": "global", **bad})


# ----------------------------------------------------------------------------- prune() on the tiny BERT


class MaskChecker(TrainingHook):
    """Runs after the pruning hook: every pruned weight must be exactly zero after every optimizer step."""

    def __init__(self, pruning: PruningHook):
        self.pruning, self.checked = pruning, 0

    def after_step(self, model, step):
        for name, module in self.pruning.linears.items():
            assert (module.weight[~self.pruning.masks[name]] == 0).all(), (name, step)
        self.checked += 1


@pytest.mark.parametrize("method", ["movement", "taylor", "magnitude"])
def test_masks_respected_after_every_optimizer_step(tiny_bert, sentiment_csv, method):
    from lowrank.data.tasks import load_task
    from lowrank.training.finetune import train

    hook = PruningHook(method, sparsity=0.6, scope="global", warmup=0.2, cooldown=0.2)
    checker = MaskChecker(hook)
    train(tiny_bert.model, tiny_bert.tokenizer, load_task(sentiment_csv), FAST, hooks=[hook, checker])
    assert checker.checked == FAST.max_steps
    assert hook.history[-1] == pytest.approx(
        int(0.6 * sum(m.numel() for m in hook.masks.values())) / sum(m.numel() for m in hook.masks.values())
    )
    assert hook.history[0] == 0.0 and all(b >= a for a, b in zip(hook.history, hook.history[1:]))


def test_prune_result_and_save_load_round_trip(tiny_bert, sentiment_csv, tmp_path):
    result = prune(tiny_bert, sentiment_csv, "movement", sparsity=0.5, scope="layer", config=FAST)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    assert all(s == pytest.approx(0.5, abs=1e-3) for s in result.layer_sparsity().values())
    assert len(result.history) == len(result.losses) == FAST.max_steps
    for name, module in compressible_linears(tiny_bert.model).items():
        assert (module.weight[~result.masks[name]] == 0).all()
    out = save_pruned(tiny_bert, result, tmp_path / "pruned")
    again = load_model(str(out))
    masks = load_masks(out)
    assert set(masks) == set(result.masks) and all(torch.equal(masks[n], result.masks[n]) for n in masks)
    assert torch.allclose(logits(again), logits(tiny_bert), atol=1e-6)
    record = json.loads((out / "pruning.json").read_text())
    assert (
        record["method"] == "movement"
        and record["scope"] == "layer"
        and record["sparsity"] == pytest.approx(0.5, abs=1e-3)
    )
    with pytest.raises(FileNotFoundError, match="masks"):
        load_masks(tmp_path)


def test_cli_prune_writes_a_loadable_masked_model(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--model",
            str(tiny_bert_dir),
            "--task",
            str(sentiment_csv),
            "--method",
            "magnitude",
            "--sparsity",
            "0.7",
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--max-length",
            "16",
            "--lr",
            "1e-3",
            "--out",
            str(out),
            "--evaluate",
            "--json",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(stdout)
    assert (
        record["method"] == "magnitude"
        and record["sparsity"] == pytest.approx(0.7, abs=1e-4)
        and 0 <= record["accuracy"] <= 1
    )
    loaded = load_model(str(out))
    masks = load_masks(out)
    for name, module in compressible_linears(loaded.model).items():
        assert (module.weight[~masks[name]] == 0).all()
    assert mask_sparsity(masks) == pytest.approx(0.7, abs=1e-4)
    code = main(["prune", "--model", str(tiny_bert_dir), "--task", str(sentiment_csv), "--sparsity", "1.5"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --sparsity")
