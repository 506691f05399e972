"""Rank allocation on a decoder: kfac_greedy and the measured (LEMS-like) strategy run on a tiny Llama, within budget,
the measured losses (run from each layer's block on) equal the whole model's, and a plan reads by layer type and
depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank import compress, load_model
from lowrank.allocation import allocate, measure_sensitivity, summarize_plan
from lowrank.allocation.summary import layer_depth, layer_type
from lowrank.data.batches import batches
from lowrank.statistics import StatisticsSettings, statistics_for

SETTINGS = StatisticsSettings(num_batches=2, batch_size=2, max_length=16)
MEASURE = {"num_batches": 1, "batch_size": 2, "max_length": 16, "use_cache": False}


@pytest.fixture()
def llama_and_stats(tiny_llama_dir, text_task):
    loaded = load_model(str(tiny_llama_dir))
    return loaded, statistics_for(loaded, text_task, ("activations", "gradients"), SETTINGS, use_cache=False)


def test_kfac_greedy_and_measured_greedy_plan_a_decoder_within_budget(llama_and_stats, text_task):
    loaded, stats = llama_and_stats
    plans = {
        "uniform": allocate(loaded, 0.6),
        "kfac_greedy": allocate(loaded, 0.6, "kfac_greedy", stats=stats),
        "measured_greedy": allocate(loaded, 0.6, "measured_greedy", stats=stats, task=text_task, **MEASURE),
    }
    for name, plan in plans.items():
        assert plan.within_budget and plan.params > 0.55 * plan.dense_params, name
        small = compress(loaded, plan.ranks, "kfac_svd", stats=stats)
        assert set(small.model.lowrank_info.ranks) == set(plan.ranks)
    measured = plans["measured_greedy"]
    assert measured.meta["calibration"]["method"] == "kfac_svd" and measured.meta["baseline_loss"] > 0
    assert measured.ranks != plans["uniform"].ranks  # spends the budget where the measured loss says


def test_measured_sensitivity_uses_the_method_and_its_statistics(llama_and_stats, text_task):
    loaded, stats = llama_and_stats
    svd = measure_sensitivity(loaded, text_task, (0.5,), **MEASURE)
    kfac = measure_sensitivity(loaded, text_task, (0.5,), **MEASURE, method="kfac_svd", stats=stats)
    name = "model.layers.1.mlp.down_proj"
    assert svd.ranks[name] == kfac.ranks[name] and svd.baseline_loss == kfac.baseline_loss
    assert svd.losses[name] != kfac.losses[name]
    with pytest.raises(ValueError, match="needs its statistics"):
        measure_sensitivity(loaded, text_task, (0.5,), **MEASURE, method="kfac_svd")


def test_measured_losses_equal_the_whole_models_loss(llama_and_stats, text_task):
    loaded, stats = llama_and_stats
    before = [p.detach().clone() for p in loaded.model.parameters()]
    table = measure_sensitivity(loaded, text_task, (0.25, 0.5), **MEASURE, method="kfac_svd", stats=stats)
    assert all(torch.equal(p, q) for p, q in zip(loaded.model.parameters(), before))  # weights restored
    calibration = list(batches(text_task, loaded.tokenizer, "train", 2, 16, shuffle=True, seed=0, limit=1))
    for name, ranks in table.ranks.items():
        for rank, measured in zip(ranks, table.losses[name]):
            small = compress(loaded, {name: rank}, "kfac_svd", stats=stats)
            with torch.no_grad():
                expected = float(small.model(**calibration[0]).loss)
            assert measured == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, rank)


def test_a_plan_reads_by_layer_type_and_depth(llama_and_stats):
    loaded, stats = llama_and_stats
    plan = allocate(loaded, 0.6, "kfac_greedy", stats=stats)
    by_type = summarize_plan(plan, "type")
    assert set(by_type["type"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert by_type["layers"].sum() == len(plan.layers) and by_type["params"].sum() == plan.params
    by_depth = summarize_plan(plan, "depth")
    assert list(by_depth["depth"]) == [0, 1]
    assert np.allclose(by_depth["kept"], by_depth["params"] / by_depth["dense_params"])
    assert layer_depth("model.layers.12.mlp.up_proj") == 12 and layer_type("model.layers.12.mlp.up_proj") == "up_proj"
    assert layer_depth("lm_head") is None
    with pytest.raises(ValueError, match="by must be"):
        summarize_plan(plan, "width")
