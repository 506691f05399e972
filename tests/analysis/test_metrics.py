import pytest
import torch

from lowrank.analysis.metrics import fisher_dispersion, predicted_loss_increase, risk_summary, risk_table, svd_risk


def problem(seed=0, heavy=2.0):
    """Fisher like a real layer's: strong per-feature and per-row structure times element-wise noise."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(30, 20, generator=g, dtype=torch.float64)
    rows = torch.exp(heavy * torch.randn(30, 1, generator=g, dtype=torch.float64))
    cols = torch.exp(heavy * torch.randn(1, 20, generator=g, dtype=torch.float64))
    F = rows * cols * torch.exp(0.5 * torch.randn(30, 20, generator=g, dtype=torch.float64))
    return W, F


def test_dispersion():
    assert fisher_dispersion(torch.ones(5, 4)) == 0.0
    F = torch.ones(5, 4)
    F[:, 0] = 10.0  # one input feature carries most of the information
    assert fisher_dispersion(F) > 1.0 and fisher_dispersion(F, axis="out") == pytest.approx(0.0)
    with pytest.raises(ValueError):
        fisher_dispersion(F, axis="diag")


def test_predicted_loss_is_half_the_tail_energy_for_uniform_fisher():
    W, _ = problem()
    s = torch.linalg.svdvals(W)
    assert predicted_loss_increase(W, torch.ones_like(W), 5) == pytest.approx(0.5 * float((s[5:] ** 2).sum()), rel=1e-9)
    assert predicted_loss_increase(W, 2 * torch.ones_like(W), 5) == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-9)


def test_svd_risk():
    W, F = problem()
    assert svd_risk(W, torch.ones_like(W), 5) == pytest.approx(1.0, rel=1e-9)
    assert svd_risk(W, F, 5) > 1.5
    assert svd_risk(W, F, 5, method="tfwsvd", solver="als") >= svd_risk(W, F, 5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_svd_risk_is_one_when_both_losses_are_rounding_noise(dtype):
    """An exactly rank-r matrix loses nothing either way: risk 1, not a ratio of two rounding errors."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(30, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 20, generator=g, dtype=torch.float64)
    F = torch.exp(3 * torch.randn(30, 20, generator=g, dtype=torch.float64))
    for method in ("fwsvd", "tfwsvd"):
        assert svd_risk(W.to(dtype), F.to(dtype), 4, method=method) == 1.0
    # below the true rank the element-wise weighting matters again
    assert svd_risk(W.to(dtype), F.to(dtype), 3, method="tfwsvd") > 2.0


def test_risk_table_and_summary():
    W1, F1 = problem(1)
    W2 = problem(2)[0]
    table = risk_table({"a": W1, "b": W2}, {"a": F1, "b": torch.ones_like(W2) * 1e-4}, {"a": 4, "b": 4})
    assert list(table.columns) == ["name", "shape", "rank", "dispersion", "loss_svd", "loss_weighted", "risk"]
    assert table.loc[1, "risk"] == pytest.approx(1.0) and table.loc[0, "risk"] > 1.5
    summary = risk_summary(table)
    assert summary["flagged"] == ["a"] and summary["svd_expected_to_drop"]
    calm = risk_summary(table[table["name"] == "b"])
    assert calm["flagged"] == [] and not calm["svd_expected_to_drop"]
    assert summary["total_loss_svd"] == pytest.approx(table["loss_svd"].sum())
    assert summary["max_risk"] == table.loc[0, "risk"]


def test_summary_flags_a_large_predicted_increase_even_at_risk_one():
    """Uniform Fisher (risk 1) but a large absolute predicted increase: SVD is still expected to drop."""
    W = problem(4)[0]
    table = risk_table({"a": W}, {"a": torch.ones_like(W)}, {"a": 2})
    summary = risk_summary(table, loss_threshold=0.05)
    assert summary["flagged"] == [] and summary["svd_expected_to_drop"]
    assert not risk_summary(table, loss_threshold=1e6)["svd_expected_to_drop"]


def test_empty_risk_table_keeps_its_columns():
    assert list(risk_table({}, {}, {}).columns) == [
        "name",
        "shape",
        "rank",
        "dispersion",
        "loss_svd",
        "loss_weighted",
        "risk",
    ]


def test_kfac_loss_increase_is_the_kronecker_quadratic_form():
    from lowrank.analysis.metrics import kfac_loss_increase

    g = torch.Generator().manual_seed(5)
    W, W_hat = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    X, Y = torch.randn(4, 9, generator=g), torch.randn(5, 7, generator=g)
    A, G = X @ X.T, Y @ Y.T
    dW = (W - W_hat).double()
    vec = dW.T.reshape(-1)  # column-major vec: vec(G dW A) = (A (x) G) vec(dW)
    expected = 0.5 * float(vec @ torch.kron(A.double(), G.double()) @ vec)
    assert kfac_loss_increase(W, W_hat, A, G) == pytest.approx(expected, rel=1e-6)
    assert kfac_loss_increase(W, W, A, G) == 0.0
    with pytest.raises(ValueError, match="do not fit"):
        kfac_loss_increase(W, W_hat, G, A)
