import numpy as np
import pytest
import torch

from lowrank.analysis.spectra import effective_rank, energy_rank, numerical_rank, rank_statistics, spectra, stable_rank


def test_statistics_on_known_spectrum():
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    # energies 16, 4, 1, 1 of 22: cumulative 0.727, 0.909, 0.955, 1.0
    assert energy_rank(s, 0.90) == 2 and energy_rank(s, 0.95) == 3 and energy_rank(s, 0.99) == 4
    assert stable_rank(s) == pytest.approx(22 / 16)
    assert numerical_rank(s, 1e-3) == 4
    assert effective_rank(np.ones(7)) == pytest.approx(7)
    assert effective_rank(np.array([1.0, 0.0, 0.0])) == pytest.approx(1)


def test_rank_statistics_of_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 30, generator=g, dtype=torch.float64)
    stats = rank_statistics(torch.linalg.svdvals(W).numpy())
    assert stats["numerical_rank"] == 3 and stats["rank99"] <= 3


def test_spectra_table_and_cache(tiny_bert):
    table = spectra(tiny_bert)
    assert len(table) == 12
    assert {"name", "type", "block", "singular_values", "energy", "effective_rank", "stable_rank", "rank90"} <= set(
        table.columns
    )
    row = table.iloc[0]
    assert row["energy"][-1] == pytest.approx(1.0) and len(row["singular_values"]) == min(row["out"], row["in"])
    assert set(table["type"]) == {"query", "key", "value", "attn_out", "ffn_up", "ffn_down"}
    again = spectra(tiny_bert)
    assert again["stable_rank"].tolist() == table["stable_rank"].tolist()
    with torch.no_grad():  # an in-place change of a weight invalidates the cache
        tiny_bert.model.get_submodule(row["name"]).weight.mul_(0).add_(1.0)
    changed = spectra(tiny_bert)
    assert changed.iloc[0]["numerical_rank"] == 1 and table.iloc[0]["numerical_rank"] > 1
