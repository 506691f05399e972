import pytest
import torch

from lowrank import factorize


def pruned_problem(seed=0, keep=0.3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(40, 30, generator=g, dtype=torch.float64)
    mask = (torch.rand(40, 30, generator=g) < keep).double()
    return W * mask, mask


def kept_error(W, mask, U, V):
    return float((mask * (W - U @ V) ** 2).sum())


@pytest.mark.parametrize("rank", [2, 5, 10])
def test_kept_entries_fit_better_than_plain_svd(rank):
    W, mask = pruned_problem()
    plain = factorize(W, rank)
    aware = factorize(W, rank, "sparsity_aware", importance=mask)
    assert kept_error(W, mask, *aware) <= kept_error(W, mask, *plain)
    assert kept_error(W, mask, *aware) < 0.8 * kept_error(W, mask, *plain)
    assert aware.info["kept"] == pytest.approx(float(mask.mean()))


def test_recovers_low_rank_matrix_from_its_kept_entries():
    """A rank-2 matrix observed on 50% of entries (matrix completion): the kept entries determine it."""
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
    mask = (torch.rand(40, 30, generator=g) < 0.5).double()
    result = factorize(truth * mask, 2, "sparsity_aware", importance=mask, max_iters=300, tol=1e-14)
    assert torch.linalg.matrix_norm(result.U @ result.V - truth) < 1e-3 * torch.linalg.matrix_norm(truth)


def test_scores_weight_the_kept_entries():
    W, mask = pruned_problem(seed=2)
    scores = torch.ones_like(W)
    scores[:5] = 100.0  # the first rows matter most
    weighted = factorize(W, 3, "sparsity_aware", importance=mask * scores)
    unweighted = factorize(W, 3, "sparsity_aware", importance=mask)
    top = mask.clone()
    top[5:] = 0
    assert kept_error(W, top, *weighted) < kept_error(W, top, *unweighted)
    with pytest.raises(ValueError, match="importance"):
        factorize(W, 3, "sparsity_aware")
