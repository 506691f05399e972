import numpy as np
import pytest
import torch

from lowrank.analysis.spectra import (
    effective_rank,
    energy_rank,
    metrics,
    numerical_rank,
    rank_statistics,
    spectra,
    stable_rank,
)
from lowrank.methods import factorize
from lowrank.models.architectures import compressible_linears


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


def _known_moments(model) -> dict:
    """Random well-conditioned moments per compressible layer: A (in, in), G (out, out), E|x| and a Fisher map."""
    g = torch.Generator().manual_seed(1)
    stats = {}
    for name, module in compressible_linears(model).items():
        out_f, in_f = module.weight.shape
        a, b = torch.randn(in_f, in_f, generator=g), torch.randn(out_f, out_f, generator=g)
        stats[name] = {
            "input_moment": a @ a.T / in_f + 0.1 * torch.eye(in_f),
            "input_abs_mean": torch.rand(in_f, generator=g) + 0.1,
            "grad_moment": b @ b.T / out_f + 0.1 * torch.eye(out_f),
            "fisher": torch.rand(out_f, in_f, generator=g),
        }
    return stats


def test_spectra_under_a_metric_are_those_of_the_matrix_the_method_truncates(tiny_bert):
    stats = _known_moments(tiny_bert.model)
    name, module = next(iter(compressible_linears(tiny_bert.model).items()))
    W, layer = module.weight.detach().double(), {k: v.double() for k, v in stats[name].items()}
    L_A, L_G = torch.linalg.cholesky(layer["input_moment"]), torch.linalg.cholesky(layer["grad_moment"])
    d = layer["fisher"].sum(dim=0).sqrt()
    expected = {
        "svd": W,
        "svd_llm": W @ L_A,
        "kfac_svd": L_G.T @ W @ L_A,
        "fwsvd": W * d,
        "asvd": W * layer["input_abs_mean"].sqrt(),
    }
    assert set(metrics()) == set(expected)
    for metric, matrix in expected.items():
        row = spectra(tiny_bert, metric=metric, stats=stats).set_index("name").loc[name]
        assert row["metric"] == metric
        np.testing.assert_allclose(row["singular_values"], torch.linalg.svdvals(matrix).numpy(), rtol=1e-4, atol=1e-6)
    # the tail of the K-FAC spectrum is kfac_svd's own loss at that rank: tr(G dW A dW^T) = sum_{i>r} s_i^2
    s = spectra(tiny_bert, metric="kfac_svd", stats=stats).set_index("name").loc[name, "singular_values"]
    U, V = factorize(module.weight.detach(), 5, "kfac_svd", stats=stats[name])
    dW = W - (U @ V).double()
    loss = torch.trace(layer["grad_moment"] @ dW @ layer["input_moment"] @ dW.T)
    assert float(loss) == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-4)


def test_spectra_under_a_metric_refuse_an_iterative_method_and_missing_statistics(tiny_bert):
    with pytest.raises(ValueError, match="no closed form.*choose one of"):
        spectra(tiny_bert, metric="tfwsvd", stats={})
    with pytest.raises(ValueError, match="needs activations, gradients statistics"):
        spectra(tiny_bert, metric="kfac_svd", stats={})


def test_spectra_of_chosen_layers_are_the_rows_of_the_whole_table(tiny_bert):
    """The dashboard draws the chosen layers before the whole table: the same rows, in the model's order."""
    stats = _known_moments(tiny_bert.model)
    names = list(compressible_linears(tiny_bert.model))
    chosen = [names[3], names[0]]
    for metric in ("svd", "kfac_svd"):
        whole = spectra(tiny_bert, metric=metric, stats=stats).set_index("name")
        part = spectra(tiny_bert, metric=metric, stats=stats, layers=chosen)
        assert list(part["name"]) == [names[0], names[3]]
        for _, row in part.iterrows():
            np.testing.assert_array_equal(row["singular_values"], whole.loc[row["name"], "singular_values"])
    with pytest.raises(ValueError, match="not compressible layers of this model: nope"):
        spectra(tiny_bert, layers=["nope"])
