import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lowrank import compress, load_task
from lowrank.allocation import (
    STRATEGIES,
    RankPlan,
    allocate,
    available_strategies,
    layer_loss_curves,
    measure_sensitivity,
    parse_budget,
    predicted_loss_curve,
    register_strategy,
)
from lowrank.allocation.budget import greedy_allocation, threshold_allocation
from lowrank.allocation.choices import layer_choices
from lowrank.allocation.curves import kfac_loss_curve, kfac_loss_curves
from lowrank.allocation.sensitivity import Sensitivity
from lowrank.analysis.spectra import energy_curve, singular_values
from lowrank.cli.main import main
from lowrank.data.batches import batches
from lowrank.layers import break_even_rank
from lowrank.methods.kfac_svd import kfac_svd
from lowrank.ranks import linear_shapes
from lowrank.statistics import StatisticsSettings, select, statistics_for


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


def spectrum_matrix(out_f, in_f, s, generator):
    """A matrix with singular values ``s`` and random singular vectors."""
    U, _ = torch.linalg.qr(torch.randn(out_f, len(s), generator=generator))
    V, _ = torch.linalg.qr(torch.randn(in_f, len(s), generator=generator))
    return (U * torch.as_tensor(s, dtype=torch.float32)) @ V.T


def linear_model(shapes, seed=0, decay=None):
    """A stack of Linear layers (a generic architecture: every Linear is compressible) with decaying spectra."""
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for i, (out_f, in_f) in enumerate(shapes):
        layer = nn.Linear(in_f, out_f)
        n = min(out_f, in_f)
        ratio = decay[i] if decay else 0.97
        with torch.no_grad():
            layer.weight.copy_(spectrum_matrix(out_f, in_f, (1.0 + i) * ratio ** np.arange(n), generator))
        layers.append(layer)
    return nn.Sequential(*layers)


def random_importance(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(o, i, generator=generator) ** 2 for n, (o, i) in linear_shapes(model).items()}


def largest_step(plan):
    return max(plan.align * (layer.out_features + layer.in_features) for layer in plan.layers)


def assert_maximal(plan):
    """No single layer can take its next choice (next aligned rank, or dense) within the budget left."""
    left = plan.budget - plan.params
    choices = layer_choices({layer.name: (layer.out_features, layer.in_features) for layer in plan.layers}, plan.align)
    for layer in plan.layers:
        c = choices[layer.name]
        k = c.choice_of(layer.rank)
        if k + 1 < c.count:
            assert c.costs()[k + 1] - c.costs()[k] > left, f"{layer.name} could still grow"


# ---------------------------------------------------------------- predicted loss curves


@pytest.mark.parametrize("axis", ["in", "out"])
def test_predicted_loss_curve_is_the_fwsvd_weighted_error(axis):
    """With F constant along the averaged axis the second-order estimate is exact for the FWSVD truncation."""
    generator = torch.Generator().manual_seed(1)
    W = torch.randn(20, 12, generator=generator, dtype=torch.float64)
    if axis == "in":
        column = torch.rand(12, generator=generator, dtype=torch.float64) + 0.1
        F = column[None, :].expand(20, 12)
        D = column.sqrt()
        U, S, Vh = torch.linalg.svd(W * D, full_matrices=False)
    else:
        row = torch.rand(20, generator=generator, dtype=torch.float64) + 0.1
        F = row[:, None].expand(20, 12)
        D = row.sqrt()
        U, S, Vh = torch.linalg.svd(D[:, None] * W, full_matrices=False)
    curve = predicted_loss_curve(W, F, axis=axis)
    assert curve.shape == (13,) and curve[-1] == 0 and (np.diff(curve) <= 0).all()
    for r in range(13):
        approx = (U[:, :r] * S[:r]) @ Vh[:r]
        approx = approx / D if axis == "in" else approx / D[:, None]
        exact = 0.5 * float((F * (W - approx) ** 2).sum())
        assert curve[r] == pytest.approx(exact, rel=1e-4, abs=1e-6)


def test_curve_without_importance_is_half_the_svd_tail():
    W = torch.randn(9, 7, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(W).double().numpy()
    assert predicted_loss_curve(W)[3] == pytest.approx(0.5 * (s[3:] ** 2).sum(), rel=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        predicted_loss_curve(W, torch.ones(7, 9))
    with pytest.raises(ValueError, match="non-negative"):
        predicted_loss_curve(W, -torch.ones(9, 7))


# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("strategy", ["uniform", "energy", "fisher_greedy"])
@pytest.mark.parametrize("align", [1, 8])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.77, 60_000])
def test_budget_is_never_exceeded_and_the_rest_is_too_small_for_any_step(strategy, align, budget):
    model = linear_model([(256, 192), (192, 384), (384, 128), (160, 160)])
    importance = random_importance(model)
    plan = allocate(model, budget, strategy, importance=importance, align=align)
    dense = sum(o * i for o, i in linear_shapes(model).values())
    assert plan.budget == (math.floor(budget * dense) if isinstance(budget, float) else budget)
    assert plan.params <= plan.budget
    assert plan.budget - plan.params < largest_step(plan)
    assert_maximal(plan)
    assert all(
        r % align == 0 and r * (o + i) < o * i
        for (o, i), r in ((linear_shapes(model)[n], r) for n, r in plan.ranks.items())
    )
    if largest_step(plan) <= 0.01 * plan.budget:
        assert plan.params >= 0.99 * plan.budget
    assert align == 8 or largest_step(plan) <= 0.01 * plan.budget  # the 99% case is exercised with align 1


def test_budget_used_on_tiny_bert_with_and_without_alignment(tiny_bert):
    importance = random_importance(tiny_bert.model)
    for align in (1, 8):
        plan = allocate(tiny_bert, 0.5, "fisher_greedy", importance=importance, align=align)
        assert plan.params <= plan.budget and plan.budget - plan.params < largest_step(plan)
        assert_maximal(plan)
        if align == 1:
            assert plan.params >= 0.99 * plan.budget


def test_break_even_layers_stay_dense():
    # 8x12: break-even rank 5, so align 8 leaves no useful rank: the layer can only stay dense
    model = linear_model([(8, 12), (64, 64)])
    plan = allocate(model, 0.5, "uniform", align=8)
    assert plan.layer("0").dense and plan.layer("0").params == 96
    assert set(plan.ranks) == {"1"}
    assert plan.layer("1").rank * 128 < 64 * 64
    # the whole dense budget: every layer dense, nothing to factorize
    full = allocate(model, 1.0, "energy", align=8)
    assert full.ranks == {} and full.params == full.budget == 96 + 64 * 64
    # a greedy plan at a generous budget makes the layer dense rather than stop just below break-even
    wide = linear_model([(32, 32), (32, 32)], decay=[0.99, 0.5])
    greedy = allocate(wide, 0.9, "fisher_greedy", importance=random_importance(wide), align=1)
    assert greedy.layer("0").dense and greedy.layer("0").params == 32 * 32


def test_ranks_feed_compress_directly(tiny_bert):
    plan = allocate(tiny_bert, 0.4, "energy", align=4)
    small = compress(tiny_bert, plan.ranks, method="svd")
    assert small.model.lowrank_info.ranks == plan.ranks
    low_rank = sum(m.U.numel() + m.V.numel() for m in small.model.modules() if hasattr(m, "U"))
    dense = sum(layer.dense_params for layer in plan.layers if layer.dense)
    assert low_rank + dense == plan.params


@pytest.mark.parametrize(
    "budget, match",
    [
        (0, r"count must be > 1"),
        (-0.5, r"fraction must be in \(0, 1\]"),
        (1.5, r"fraction must be in \(0, 1\].*int for an absolute"),
        (float("nan"), r"fraction must be in \(0, 1\]"),
        (True, "budget must be a fraction"),
        ("0.5", "budget must be a fraction"),
        (10**9, "exceeds the .* parameters of the dense"),
        (0.01, "below the smallest possible plan"),
        (2_000, "below the smallest possible plan"),
    ],
)
def test_bad_budgets_raise_clear_errors(budget, match):
    model = linear_model([(64, 48), (48, 96)])
    with pytest.raises(ValueError, match=match):
        allocate(model, budget, "uniform", align=8)


def test_other_bad_input_raises_clear_errors(tiny_bert):
    model = linear_model([(64, 48), (48, 96)])
    with pytest.raises(ValueError, match="needs importance"):
        allocate(model, 0.5, "fisher_greedy")
    with pytest.raises(ValueError, match="missing 1"):
        allocate(model, 0.5, "fisher_greedy", importance={"0": torch.ones(64, 48)})
    with pytest.raises(ValueError, match="unknown allocation strategy 'nope'; available: .*fisher_greedy"):
        allocate(model, 0.5, "nope")
    with pytest.raises(ValueError, match="does not take option"):
        allocate(model, 0.5, "uniform", fractions=(0.5,))
    with pytest.raises(ValueError, match="align must be a positive integer"):
        allocate(model, 0.5, "uniform", align=0)
    with pytest.raises(ValueError, match="needs a task"):
        allocate(tiny_bert, 0.5, "sensitivity")
    with pytest.raises(ValueError, match="needs a LoadedModel"):
        allocate(model, 0.5, "sensitivity", task="rotten_tomatoes")


def test_parse_budget():
    assert parse_budget("0.5") == 0.5 and parse_budget("40%") == 0.4 and parse_budget("4000000") == 4_000_000
    assert isinstance(parse_budget("4000000"), int)
    with pytest.raises(ValueError, match="percentage"):
        parse_budget("half")


# ---------------------------------------------------------------- greedy quality


def brute_force(choices, losses, budget):
    best = math.inf
    names = list(choices)
    for combo in itertools.product(*(range(choices[n].count) for n in names)):
        if sum(choices[n].costs()[k] for n, k in zip(names, combo)) <= budget:
            best = min(best, sum(losses[n][k] for n, k in zip(names, combo)))
    return best


def test_greedy_is_optimal_for_convex_curves_and_equal_steps():
    """Square 12x12 layers (every step, including the jump to dense, costs 24 parameters) with
    geometric spectra of ratio < 1/sqrt(2) (convex curves): greedy equals brute force at every budget."""
    model = linear_model([(12, 12)] * 3, seed=3, decay=[0.65, 0.5, 0.3])
    # a constant importance per layer keeps each weighted spectrum geometric
    importance = {n: torch.full((o, i), 0.5 + k) for k, (n, (o, i)) in enumerate(linear_shapes(model).items())}
    curves = layer_loss_curves(model, importance)
    choices = layer_choices(linear_shapes(model), 1)
    losses = {n: np.array([curves[n][r] for r in c.ranks] + [0.0]) for n, c in choices.items()}
    smallest = sum(int(c.costs()[0]) for c in choices.values())
    for budget in range(smallest, 3 * 144 + 1, 7):
        plan = allocate(model, budget, "fisher_greedy", importance=importance, align=1)
        assert plan.predicted_loss == pytest.approx(brute_force(choices, losses, budget), rel=1e-9, abs=1e-12)


def test_greedy_against_brute_force_on_uneven_layers():
    """Uneven steps: never below the optimum (sanity), never below its certified lower bound, usually optimal."""
    rng = np.random.default_rng(0)
    choices = layer_choices({"a": (12, 10), "b": (16, 6), "c": (9, 14)}, 1)
    exact = total = 0
    for _ in range(4):
        losses = {}
        for n, c in choices.items():
            s = np.sort(rng.gamma(1.0, 1.0, 10) * np.exp(-np.arange(10) / rng.uniform(2, 10)))[::-1]
            tail = 0.5 * np.append(np.cumsum((s**2)[::-1])[::-1], 0.0)
            losses[n] = np.array([tail[r] for r in c.ranks] + [0.0])
        smallest = sum(int(c.costs()[0]) for c in choices.values())
        for budget in range(smallest, sum(c.dense_params for c in choices.values()) + 1, 11):
            choice, bound = greedy_allocation(choices, budget, losses)
            loss = sum(losses[n][k] for n, k in choice.items())
            assert sum(choices[n].costs()[k] for n, k in choice.items()) <= budget
            optimum = brute_force(choices, losses, budget)
            assert bound <= optimum + 1e-12 and optimum <= loss + 1e-12
            exact += loss <= optimum + 1e-12
            total += 1
    assert exact >= 0.6 * total


def test_greedy_takes_a_non_convex_jump_to_dense_as_one_step_and_fills_the_rest():
    # layer a: almost nothing gained until the jump to dense (a flat spectrum); layer b: small and convex
    choices = layer_choices({"a": (12, 12), "b": (4, 8)}, 1)  # a: ranks 1..5 (24 each), dense 144; b: 12, 24, dense 32
    losses = {"a": np.array([12.0, 11.9, 11.8, 11.7, 11.6, 0.0]), "b": np.array([1.0, 0.5, 0.0])}
    # the whole jump of a (rank 1 -> dense, 120 parameters, 0.1 per parameter) beats b's steps (~0.04)
    choice, bound = greedy_allocation(choices, 24 + 12 + 120, losses)
    assert choice == {"a": 5, "b": 0} and bound == pytest.approx(1.0)
    assert brute_force(choices, losses, 24 + 12 + 120) == pytest.approx(1.0)
    # the jump does not fit: b is completed, then single steps of a fill what is left
    budget = 24 + 12 + 60
    choice, _ = greedy_allocation(choices, budget, losses)
    cost = sum(choices[n].costs()[k] for n, k in choice.items())
    assert choice == {"a": 1, "b": 2} and cost == 24 * 2 + 32 and budget - cost < 24  # a at rank 2, b dense


def test_fisher_greedy_predicts_no_more_loss_than_uniform_or_energy(tiny_bert, sentiment_csv):
    stats = statistics_for(
        tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=2, batch_size=8), use_cache=False
    )
    importance = select(stats, "fisher")
    # per-layer statistics and the legacy {layer: F} give the same plan
    from_stats = allocate(tiny_bert, 0.5, "fisher_greedy", stats=stats)
    from_importance = allocate(tiny_bert, 0.5, "fisher_greedy", importance=importance)
    assert from_stats.ranks == from_importance.ranks and from_stats.predicted_loss == from_importance.predicted_loss
    for budget in (0.3, 0.5, 0.7):
        for align in (1, 4):
            greedy = allocate(tiny_bert, budget, "fisher_greedy", importance=importance, align=align)
            assert greedy.meta["predicted_loss_lower_bound"] <= greedy.predicted_loss * (
                1 + 1e-9
            )  # equal up to rounding
            for other in ("uniform", "energy"):
                plan = allocate(tiny_bert, budget, other, importance=importance, align=align)
                assert math.isfinite(plan.predicted_loss)
                assert greedy.predicted_loss <= plan.predicted_loss * (1 + 1e-9)


def kfac_loss(W, A, G, W_hat) -> float:
    dW = (W - W_hat).double()
    return 0.5 * float(torch.trace(G.double() @ dW @ A.double() @ dW.T))


def test_kfac_loss_curve_is_the_loss_kfac_svd_attains_and_no_rank_r_matrix_does_better():
    generator = torch.Generator().manual_seed(3)
    W = torch.randn(9, 7, generator=generator)
    X, Y = torch.randn(7, 40, generator=generator), torch.randn(9, 30, generator=generator)
    A, G = X @ X.T / 40, Y @ Y.T / 30
    curve = kfac_loss_curve(W, A, G)
    assert curve.shape == (8,) and curve[-1] == 0 and np.all(np.diff(curve) <= 1e-12)
    assert curve[0] == pytest.approx(kfac_loss(W, A, G, torch.zeros_like(W)), rel=1e-9)
    for rank in (1, 3, 5):
        U, V = kfac_factors(W, rank, A, G)
        assert kfac_loss(W, A, G, U @ V) == pytest.approx(curve[rank], rel=1e-6)
        for _ in range(5):  # other rank-r matrices: perturbed factors of the optimum, and the plain SVD
            other = (U + 1e-2 * torch.randn(U.shape, generator=generator)) @ (
                V + 1e-2 * torch.randn(V.shape, generator=generator)
            )
            assert kfac_loss(W, A, G, other) >= curve[rank] - 1e-9
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        assert kfac_loss(W, A, G, U[:, :rank] * S[:rank] @ Vh[:rank]) >= curve[rank] - 1e-9
    with pytest.raises(ValueError, match="do not fit"):
        kfac_loss_curve(W, G, A)


def kfac_factors(W, rank, A, G):
    f = kfac_svd(W.double(), rank, {"input_moment": A.double(), "grad_moment": G.double()})
    return f.U, f.V


def test_kfac_greedy_predicts_no_more_kfac_loss_than_uniform_and_needs_the_moments(tiny_bert, sentiment_csv):
    stats = statistics_for(
        tiny_bert,
        sentiment_csv,
        ("activations", "gradients"),
        StatisticsSettings(num_batches=2, batch_size=8),
        use_cache=False,
    )
    curves = kfac_loss_curves(tiny_bert, stats)

    def predicted(plan):
        return sum(curves[n][r] for n, r in plan.ranks.items())

    for budget in (0.3, 0.5, 0.7):
        greedy = allocate(tiny_bert, budget, "kfac_greedy", stats=stats, align=4)
        assert greedy.params <= greedy.budget
        assert greedy.meta["kfac_loss_lower_bound"] <= predicted(greedy) * (1 + 1e-9)
        for other in ("uniform", "energy"):
            assert predicted(greedy) <= predicted(allocate(tiny_bert, budget, other, align=4)) * (1 + 1e-9)
    with pytest.raises(ValueError, match="input and gradient moments"):
        allocate(
            tiny_bert, 0.5, "kfac_greedy", stats={n: {"input_moment": v["input_moment"]} for n, v in stats.items()}
        )


def test_threshold_allocation_treats_a_choice_as_bad_as_any_larger_one():
    choices = layer_choices({"a": (12, 12), "b": (12, 12)}, 1)  # ranks 1..5 then dense, 24 parameters a step
    noisy = {"a": np.array([5.0, 1.0, 3.0, 2.0, 2.5, 0.0]), "b": np.array([4.0, 3.5, 3.0, 2.0, 1.5, 0.0])}
    # a's rank 2 scores 1.0 but rank 3 scores 3.0: rank 2 counts as 3.0 (the worst of ranks 2..dense).
    # At t = 3: a rank 2, b rank 3 (5 steps); t = 2.5 needs 8 steps > 7; the fill then gives a two more ranks
    choice, threshold = threshold_allocation(choices, 24 * 7, noisy)
    assert threshold == 3.0 and choice == {"a": 3, "b": 2}
    monotone = {"a": np.array([5.0, 3.0, 3.0, 2.5, 2.5, 0.0]), "b": noisy["b"]}
    assert threshold_allocation(choices, 24 * 7, monotone) == (choice, threshold)


def test_uniform_keeps_about_the_same_fraction_everywhere():
    model = linear_model([(64, 48), (48, 96), (96, 32)])
    plan = allocate(model, 0.5, "uniform", align=1)
    kept = [layer.params / layer.dense_params for layer in plan.layers]
    steps = [(layer.out_features + layer.in_features) / layer.dense_params for layer in plan.layers]
    assert max(kept) - min(kept) <= 2 * max(steps)
    assert math.isnan(plan.predicted_loss)  # no importance given


def test_energy_equalizes_kept_energy():
    model = linear_model([(64, 48), (48, 96), (96, 32)], decay=[0.9, 0.97, 0.8])
    plan = allocate(model, 0.4, "energy", align=1)
    kept = []
    for layer in plan.layers:
        energy = np.append(0.0, energy_curve(singular_values(model.get_submodule(layer.name).weight)))
        kept.append(energy[layer.rank])
    target = plan.meta["energy"]
    assert all(e >= target - 1e-9 for e in kept)  # every layer keeps at least the common fraction ...
    assert max(kept) - min(kept) < 0.1  # ... and they are close to it


# ---------------------------------------------------------------- plans


def test_plan_json_round_trip_and_file(tmp_path, tiny_bert):
    importance = random_importance(tiny_bert.model)
    plan = allocate(tiny_bert, 0.5, "fisher_greedy", importance=importance, align=4)
    text = plan.to_json()
    data = json.loads(text)
    assert data["ranks"] == plan.ranks and data["params"] == plan.params and data["strategy"] == "fisher_greedy"
    for source in (text, data):
        again = RankPlan.from_json(source)
        assert again.ranks == plan.ranks and again.budget == plan.budget and again.align == 4
        assert again.to_frame().equals(plan.to_frame())
    path = plan.save(tmp_path / "plans" / "p.json")
    assert RankPlan.load(path).to_dict() == plan.to_dict()
    assert list(path.parent.iterdir()) == [path]  # atomic write left no temporary file
    # dense layers and unknown predicted losses survive as null
    uniform = allocate(tiny_bert, 1.0, "uniform")
    back = RankPlan.from_json(uniform.to_json())
    assert back.ranks == {} and all(layer.dense for layer in back.layers) and math.isnan(back.predicted_loss)
    frame = plan.to_frame()
    assert list(frame.columns) == ["name", "out", "in", "rank", "params", "dense_params", "predicted_loss", "dense"]
    assert frame["params"].sum() == plan.params


def test_plan_from_bad_json_raises():
    with pytest.raises(ValueError, match="rank plan is not valid JSON"):
        RankPlan.from_json("{nope")
    with pytest.raises(ValueError, match="not a rank plan"):
        RankPlan.from_json({"ranks": {"a": 4}})
    bad = {
        "format": "lowrank-plan",
        "version": 1,
        "strategy": "x",
        "budget": 10,
        "ranks": {"a": 4},
        "layers": [{"name": "a", "out": 16, "in": 16, "rank": 6}],
    }
    with pytest.raises(ValueError, match="disagrees"):
        RankPlan.from_json(bad)
    bad["ranks"] = {"a": 6}
    assert RankPlan.from_json(bad).ranks == {"a": 6}
    bad["layers"][0]["rank"] = 8
    bad["ranks"] = {"a": 8}
    with pytest.raises(ValueError, match="break-even"):
        RankPlan.from_json(bad)
    with pytest.raises(ValueError, match="plan file not found"):
        RankPlan.load("/no/such/plan.json")


def test_with_ranks_reads_predicted_loss_from_curves(tiny_bert):
    importance = random_importance(tiny_bert.model)
    curves = layer_loss_curves(tiny_bert, importance)
    plan = allocate(tiny_bert, 0.5, "fisher_greedy", importance=importance)
    name = plan.layers[0].name
    for layer in plan.layers:
        assert layer.predicted_loss == pytest.approx(0.0 if layer.dense else curves[layer.name][layer.rank])
    edited = plan.with_ranks({name: 3}, curves)
    assert edited.layer(name).rank == 3 and edited.layer(name).predicted_loss == pytest.approx(curves[name][3])
    assert plan.layer(name).rank != 3  # the original is untouched
    assert edited.with_ranks({name: None}, curves).layer(name).predicted_loss == 0.0
    with pytest.raises(ValueError, match="break-even"):
        plan.with_ranks({name: break_even_rank(64, 64)})
    with pytest.raises(ValueError, match="not layers of this plan"):
        plan.with_ranks({"nope": 4})


def test_custom_strategy_registration_and_budget_check():
    model = linear_model([(64, 48), (48, 96)])

    @register_strategy("test_everything_dense", "Every layer dense (ignores the budget).")
    def everything_dense(ctx):
        return {n: c.count - 1 for n, c in ctx.layers.items()}

    try:
        assert "test_everything_dense" in available_strategies()
        assert allocate(model, 1.0, "test_everything_dense").ranks == {}
        with pytest.raises(ValueError, match="exceeded the budget"):
            allocate(model, 0.5, "test_everything_dense")
    finally:
        STRATEGIES.pop("test_everything_dense")
    assert {"uniform", "energy", "fisher_greedy", "sensitivity"} <= set(available_strategies())


# ---------------------------------------------------------------- measured sensitivity


def test_sensitivity_measures_real_loss_and_is_cached(tiny_bert, sentiment_csv, tmp_path):
    task = load_task(sentiment_csv)
    before = {n: p.detach().clone() for n, p in tiny_bert.model.named_parameters()}
    calls = []
    table = measure_sensitivity(
        tiny_bert,
        task,
        fractions=(0.25, 0.5),
        num_batches=2,
        batch_size=8,
        progress=lambda done, total, message: calls.append((done, total)),
    )
    assert all(torch.equal(p, before[n]) for n, p in tiny_bert.model.named_parameters())  # weights restored
    assert calls[-1] == (12, 12) and table.examples == 16
    assert table.ranks["bert.encoder.layer.1.intermediate.dense"][0] == int(0.25 * 256 * 64 // 320)
    # every layer's first point (measured from its block on, padded batches), recomputed by compressing that layer
    # alone with plain SVD and running the whole model
    calibration = list(batches(task, tiny_bert.tokenizer, "train", 8, 128, shuffle=True, seed=0, limit=2))
    assert any(not b["attention_mask"].all() for b in calibration)
    for name, ranks in table.ranks.items():
        small = compress(tiny_bert, {name: ranks[0]}, method="svd")
        with torch.no_grad():
            expected = sum(float(small.model(**b).loss) * len(b["labels"]) for b in calibration) / 16
        assert table.losses[name][0] == pytest.approx(expected, rel=1e-5), name
    files = list((tmp_path / "cache" / "sensitivity").glob("*.safetensors"))
    assert len(files) == 1
    again = measure_sensitivity(
        tiny_bert,
        task,
        fractions=(0.5, 0.25),
        num_batches=2,
        batch_size=8,
        progress=lambda *a: pytest.fail("a cached table must not be measured again"),
    )
    assert again.losses == table.losses and again.baseline_loss == table.baseline_loss


def test_sensitivity_strategy_on_tiny_bert(tiny_bert, sentiment_csv):
    plan = allocate(tiny_bert, 0.5, "sensitivity", task=sentiment_csv, align=4, num_batches=2, batch_size=8)
    assert plan.params <= plan.budget and plan.budget - plan.params < largest_step(plan)
    assert_maximal(plan)
    assert plan.meta["calibration"]["examples"] == 16 and math.isfinite(plan.meta["loss_threshold"])
    assert compress(tiny_bert, plan.ranks).model.lowrank_info.ranks == plan.ranks


def test_sensitivity_interpolation():
    table = Sensitivity(1.0, (0.25, 0.5), {"a": [4, 8]}, {"a": [1.6, 1.2]}, {"a": (16, 16)}, 10)
    values = table.increase_at("a", [2, 4, 6, 8, 12, 16])
    np.testing.assert_allclose(values, [np.nan, 0.6, 0.4, 0.2, 0.1, 0.0])


def test_sensitivity_goes_below_measured_ranks_only_when_the_budget_requires_it(tiny_bert, sentiment_csv):
    options = dict(task=sentiment_csv, align=1, num_batches=1, batch_size=8, fractions=(0.25, 0.5))
    smallest_measured = {
        n: max(1, int(0.25 * o * i // (o + i))) for n, (o, i) in linear_shapes(tiny_bert.model).items()
    }
    floor = sum(r * sum(linear_shapes(tiny_bert.model)[n]) for n, r in smallest_measured.items())
    above = allocate(tiny_bert, floor + 1000, "sensitivity", **options)
    assert all(layer.dense or layer.rank >= smallest_measured[layer.name] for layer in above.layers)
    below = allocate(tiny_bert, floor - 2000, "sensitivity", **options)
    assert any(layer.rank is not None and layer.rank < smallest_measured[layer.name] for layer in below.layers)
    assert below.params <= below.budget


# ---------------------------------------------------------------- command line


def test_cli_allocate_then_compress_with_plan(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    plan_path = tmp_path / "plan.json"
    code = main(
        [
            "allocate",
            "--model",
            str(tiny_bert_dir),
            "--budget",
            "0.5",
            "--strategy",
            "fisher_greedy",
            "--task",
            str(sentiment_csv),
            "--fisher-batches",
            "2",
            "--align",
            "4",
            "--out",
            str(plan_path),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    plan = RankPlan.load(plan_path)
    assert record["ranks"] == plan.ranks and record["params"] <= record["budget"] and record["out"] == str(plan_path)
    code = main(["compress", "--model", str(tiny_bert_dir), "--plan", str(plan_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["layers"] == len(plan.ranks)
    # human-readable table, and a clear error for a bad budget
    assert main(["allocate", "--model", str(tiny_bert_dir), "--budget", "40%", "--strategy", "uniform"]) == 0
    out, _ = capsys.readouterr()
    assert "attention.self.query" in out and "parameters" in out
    assert main(["allocate", "--model", str(tiny_bert_dir), "--budget", "1.5"]) == 2
    _, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("error: a budget fraction must be in (0, 1]")


def test_cli_allocate_predict_uses_the_shared_statistics_flags(capsys, tiny_bert_dir, sentiment_csv):
    code = main(
        [
            "allocate",
            "--model",
            str(tiny_bert_dir),
            "--budget",
            "0.5",
            "--strategy",
            "uniform",
            "--predict",
            "--task",
            str(sentiment_csv),
            "--fisher-batches",
            "1",
            "--batch-size",
            "4",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["strategy"] == "uniform" and math.isfinite(record["predicted_loss"])


def test_the_default_strategy_is_uniform_everywhere(tiny_bert):
    """fisher_greedy lost to uniform on an untuned task: allocate, the CLI and sweeps default to uniform."""
    from lowrank.cli.main import build_parser
    from lowrank.experiments.sweep import SweepSpec

    assert allocate(tiny_bert, 0.5).strategy == "uniform"
    assert build_parser().parse_args(["allocate", "--model", "m", "--budget", "0.5"]).strategy == "uniform"
    assert SweepSpec("m", "t", ["svd"], [0.5]).strategy == "uniform"
