"""Predicted against measured: single-layer KL as measured by a compressed copy, Spearman's rho, the run table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import lowrank
from lowrank.analysis.agreement import rank_correlation, run_agreement, single_layer_kl
from lowrank.data.batches import batches
from lowrank.evaluation.quality import class_log_probabilities, prediction_kl
from lowrank.report import DropCheck


def test_single_layer_kl_is_the_kl_of_the_model_with_that_layer_alone_compressed(tiny_bert, sentiment_csv):
    names = list(lowrank.compressible_linears(tiny_bert.model))[:3]
    ranks = dict(zip(names, (2, 4, 8)))
    before = {n: p.detach().clone() for n, p in tiny_bert.model.named_parameters()}
    table = single_layer_kl(tiny_bert, sentiment_csv, ranks, batch_size=8, limit=2)
    assert list(table["name"]) == names and list(table["rank"]) == [2, 4, 8]
    for n, p in tiny_bert.model.named_parameters():
        assert torch.equal(p, before[n])  # the model was never modified
    dense = class_log_probabilities(tiny_bert, sentiment_csv, batch_size=8, limit=2)
    for name, rank, kl in table.itertuples(index=False):
        alone = lowrank.compress(tiny_bert, {name: rank}, method="svd")
        expected = prediction_kl(dense, class_log_probabilities(alone, sentiment_csv, batch_size=8, limit=2))
        assert kl == pytest.approx(expected, rel=1e-4, abs=1e-10)
        assert kl >= 0


def test_single_layer_kl_of_a_causal_lm_is_per_predicted_token(tiny_llama, text_task):
    name = next(iter(lowrank.compressible_linears(tiny_llama.model)))
    (kl,) = single_layer_kl(tiny_llama, text_task, {name: 4}, batch_size=2, max_length=32, limit=1)["measured_kl"]
    alone = lowrank.compress(tiny_llama, {name: 4}, method="svd")
    batch = {"input_ids": next(iter(batches(text_task, tiny_llama.tokenizer, "validation", 2, 32)))["input_ids"]}
    with torch.no_grad():
        p = torch.log_softmax(tiny_llama.model(**batch).logits[:, :-1].double(), -1).flatten(0, 1)
        q = torch.log_softmax(alone.model(**batch).logits[:, :-1].double(), -1).flatten(0, 1)
    assert kl == pytest.approx(prediction_kl(p, q), rel=1e-4) and kl > 0


def test_rank_correlation_is_spearmans_rho_of_the_finite_pairs():
    rng = np.random.default_rng(0)
    x, y = rng.random(12), rng.random(12)
    y[3] = y[5]  # a tie
    assert rank_correlation(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, np.nan, np.inf], [3, 2, 1, 5, 6]) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([1, 2], [1, 2])) and math.isnan(rank_correlation([1, 2, 3], [1, 1, 1]))


def test_run_agreement_lists_each_checked_run():
    checks = [DropCheck(0.3, 7, 0.5, True, 0.4, -0.1), DropCheck(0.5, 8, 0.2, False, None, None)]
    table = run_agreement(checks)
    assert list(table["run"]) == [7, 8] and list(table["predicted"]) == [0.5, 0.2]
    assert table["measured"].iloc[0] == 0.4 and table["measured"].isna().iloc[1]
