"""Why a plan gives each layer its rank: the strategy's own curve, the budget's price, the reasons' rules."""

import math

import numpy as np
import pytest
import torch

from lowrank.allocation import allocate, explain_plan, strategy_curves
from lowrank.allocation.curves import kfac_loss_curves, layer_loss_curves
from lowrank.allocation.explain import rate, reason
from lowrank.analysis.spectra import energy_curve, singular_values
from lowrank.ranks import linear_shapes
from lowrank.statistics import StatisticsSettings, statistics_for
from tests.allocation.test_allocate import linear_model, random_importance


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


def test_the_curves_are_the_ones_each_strategy_reads(tiny_bert, sentiment_csv):
    stats = statistics_for(
        tiny_bert, sentiment_csv, ("activations", "gradients"), StatisticsSettings(num_batches=2, batch_size=8)
    )
    kfac = strategy_curves(tiny_bert, "kfac_greedy", stats=stats)
    expected = kfac_loss_curves(tiny_bert, stats)
    assert set(kfac) == set(expected)
    for name in kfac:
        np.testing.assert_allclose(kfac[name], expected[name])
    energy = strategy_curves(tiny_bert, "energy")
    for name, W in ((n, tiny_bert.model.get_submodule(n).weight) for n in energy):
        np.testing.assert_allclose(energy[name][1:], 1.0 - energy_curve(singular_values(W)))
        assert energy[name][0] == 1.0 and energy[name][-1] == 0.0
    assert strategy_curves(tiny_bert, "uniform") is None
    with pytest.raises(ValueError, match="Fisher"):
        strategy_curves(tiny_bert, "fisher_greedy")


def test_the_energy_strategy_still_keeps_a_common_energy_fraction():
    model = linear_model([(48, 32), (32, 48), (40, 40)], decay=[0.7, 0.95, 0.85])
    plan = allocate(model, 0.4, "energy", align=1)
    curves = strategy_curves(model, "energy")
    kept = {n: 1.0 - curves[n][r] for n, r in plan.ranks.items()}
    assert min(kept.values()) >= plan.meta["energy"] - 0.05  # the fill step only adds ranks


def brute_rate(curve, rank, out_f, in_f, align):
    """The rate by its definition, over every larger aligned rank below break-even and dense."""
    width = out_f + in_f
    best = (curve[rank] - curve[-1]) / (out_f * in_f - rank * width)
    for r in range(align, min(out_f, in_f) + 1, align):
        if rank < r and r * width < out_f * in_f:
            best = max(best, (curve[rank] - curve[r]) / ((r - rank) * width))
    return best


@pytest.mark.parametrize("align", [1, 4])
def test_rate_is_the_best_loss_decrease_per_parameter_above_the_rank(align):
    rng = np.random.default_rng(0)
    curve = np.append(np.sort(rng.random(24))[::-1].cumsum()[::-1], 0.0)  # non-increasing, ends at 0
    for rank in (1, 4, 5, 8):
        assert rate(curve, rank, 24, 32, align) == pytest.approx(brute_rate(curve, rank, 24, 32, align))
    assert math.isnan(rate(curve, None, 24, 32, align))


def test_greedy_price_is_the_largest_rate_left_and_no_factorized_layer_offers_more():
    model = linear_model([(48, 32), (32, 48), (40, 40), (64, 16)], decay=[0.7, 0.95, 0.85, 0.9])
    importance = random_importance(model)
    plan = allocate(model, 0.4, "fisher_greedy", importance=importance, align=1)
    curves = strategy_curves(model, "fisher_greedy", importance=importance)
    explained = explain_plan(plan, curves, "the diagonal Fisher")
    assert explained.price.greedy and explained.price.unit == "nats per parameter"
    finite = [r for r in explained.rates.values() if math.isfinite(r)]
    assert explained.price.value == max(finite) > 0
    # the greedy bought the steps above the price: each factorized layer's last step gained at least the rates left
    # in layers whose next step did not fit (a Lagrangian check on the hull of one layer against the price)
    for layer in plan.layers:
        if layer.rank is not None and layer.rank > 1:
            r = layer.rank
            last = (curves[layer.name][r - 1] - curves[layer.name][r]) / (layer.out_features + layer.in_features)
            assert last >= min(finite) * (1 - 1e-9)
    assert all(
        isinstance(explained.reasons[layer.name], str) and explained.reasons[layer.name] for layer in plan.layers
    )


def test_uniform_price_is_its_kept_fraction_and_the_reference_curve_says_what_it_ignores():
    model = linear_model([(48, 32), (32, 48), (40, 40)], decay=[0.5, 0.99, 0.9])
    importance = {n: torch.ones(o, i) for n, (o, i) in linear_shapes(model).items()}
    plan = allocate(model, 0.5, "uniform", align=1)
    curves = layer_loss_curves(model, importance)
    explained = explain_plan(plan, curves, "the diagonal Fisher", own=False)
    assert not explained.price.greedy and explained.price.value == plan.meta["kept_fraction"]
    reasons = explained.reasons
    assert all("the same kept fraction" in r for r in reasons.values())
    # layer 0 decays fast (its next ranks buy little), layer 1 is flat and 2x larger (its next ranks buy much)
    assert "would get less" in reasons["0"] and "would get more" in reasons["1"]
    assert explain_plan(plan, None).reasons["0"].startswith("rank ")


def curve_of(values):
    return np.append(np.asarray(values, dtype=float), 0.0)


@pytest.mark.parametrize(
    "rank, curve, median_scale, words",
    [
        (None, curve_of([1.0, 0.5]), 1.0, "kept dense"),
        (2, curve_of([1.0, 0.9, 0.8, 0.7, 0.6]), 1.0, "flat spectrum under K-FAC: each rank buys little"),
        (2, curve_of([0.01, 0.004, 0.002, 0.001, 0.0005]), 1.0, "matters little under K-FAC"),
        (2, curve_of([100.0, 20.0, 10.0, 5.0, 1.0]), 1.0, "sensitive under K-FAC"),
        (2, curve_of([1.0] + [0.02] * 7), 1.0, "fast decay under K-FAC: 2 of 8 ranks buy back 98%"),
        (4, curve_of([1.0, 0.5, 0.3, 0.2, 0.1, 0.05]), 1.0, "ranks bought until the next ones gained less"),
    ],
)
def test_reason_rules(rank, curve, median_scale, words):
    from lowrank.allocation.explain import Price

    text = reason("kfac_greedy", "K-FAC", True, rank, curve, 0.001, 0.001, median_scale, Price(0.002, "nats", True))
    assert words in text


def test_a_hand_edited_layer_of_a_uniform_plan_says_so():
    model = linear_model([(48, 32), (32, 48), (40, 40)])
    plan = allocate(model, 0.5, "uniform", align=1)
    edited = plan.with_ranks({"0": 2})
    reasons = explain_plan(edited, None).reasons
    assert reasons["0"].startswith("rank 2: set by hand") and "the same kept fraction" in reasons["1"]
