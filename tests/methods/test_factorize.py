import pytest
import torch

from lowrank import LowRankLinear, factorize
from lowrank.layers import break_even_rank, check_rank, max_useful_rank
from lowrank.methods.registry import available_methods, weighted_error


def random_matrix(out=30, inp=20, seed=0, dtype=torch.float64):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("rank", [1, 5, 19, 20])
def test_svd_error_equals_tail_singular_values(rank):
    W = random_matrix()
    U, V = factorize(W, rank)
    s = torch.linalg.svdvals(W)
    assert U.shape == (30, rank) and V.shape == (rank, 20)
    assert weighted_error(W, U, V) == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-9, abs=1e-9)


def test_svd_recovers_exact_low_rank_matrix():
    W = random_matrix(30, 4, seed=1) @ random_matrix(4, 20, seed=2)
    U, V = factorize(W, 4)
    assert torch.allclose(U @ V, W, atol=1e-10)


def test_factorization_unpacks_and_keeps_dtype():
    W = random_matrix(dtype=torch.float32)
    result = factorize(W, 3)
    U, V = result
    assert U.dtype == torch.float32 and result.rank == 3 and result.history == []


@pytest.mark.parametrize("rank", [0, -1, 21, 2.5])
def test_factorize_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match="rank"):
        factorize(random_matrix(), rank)


def test_factorize_rejects_nan_and_unknown_method():
    W = random_matrix()
    W[3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        factorize(W, 2)
    with pytest.raises(ValueError, match="unknown factorization method"):
        factorize(random_matrix(), 2, method="nope")
    with pytest.raises(ValueError, match="shape"):
        factorize(random_matrix(), 2, method="fwsvd", importance=torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="takes no importance"):  # svd would ignore it: refused, not dropped
        factorize(random_matrix(), 2, importance=torch.ones(3, 3, dtype=torch.float64))


def test_registry_lists_svd():
    assert "svd" in available_methods()


def test_low_rank_linear_matches_factors():
    U, V, b = torch.randn(12, 3), torch.randn(3, 10), torch.randn(12)
    layer = LowRankLinear(U, V, b)
    x = torch.randn(5, 7, 10)
    expected = x @ (U @ V).T + b
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.rank == 3 and layer.in_features == 10 and layer.out_features == 12


def test_break_even():
    # 12x10: dense 120 params; rank r costs 22r -> break-even at ceil(120/22) = 6
    assert break_even_rank(12, 10) == 6
    assert max_useful_rank(12, 10) == 5
    check_rank(5, 12, 10)
    with pytest.raises(ValueError, match="break-even"):
        check_rank(6, 12, 10)
    with pytest.raises(ValueError, match="at least 1"):
        LowRankLinear(torch.zeros(12, 0), torch.zeros(0, 10))
    with pytest.raises(ValueError, match="exceeds"):
        check_rank(11, 12, 10)
