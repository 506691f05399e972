import pytest
import torch

from lowrank import factorize
from lowrank.methods.registry import weighted_error
from lowrank.methods.solvers import SOLVERS, normalize_importance

SOLVER_NAMES = sorted(SOLVERS)
# every solver, plus ALS with exact batched solves instead of the default CG inner solver
CONFIGS = [(name, {}) for name in SOLVER_NAMES] + [("als", {"cg_steps": 0})]
CONFIG_IDS = [name + ("-exact" if options else "") for name, options in CONFIGS]


def problem(out=40, inp=24, seed=0, heavy=3.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    F = torch.exp(heavy * torch.randn(out, inp, generator=g, dtype=torch.float64))  # heavy-tailed, ~8 decades
    return W, F


def E(W, result, F):
    return weighted_error(W, result.U, result.V, F)


def test_normalize_importance_floor_and_scale():
    F = torch.tensor([[0.0, 1e-12], [2.0, 4.0]])
    Fn, scale = normalize_importance(F, floor=1e-6)
    assert scale == 4.0 and Fn.max() == 1.0 and Fn.min() == 1e-6
    assert torch.equal(Fn, torch.tensor([[1e-6, 1e-6], [0.5, 1.0]]))
    Fn, scale = normalize_importance(torch.zeros(2, 3))  # no information at all: uniform weights
    assert scale == 1.0 and torch.equal(Fn, torch.ones(2, 3))


@pytest.mark.parametrize("axis", ["in", "out"])
def test_fwsvd_is_optimal_for_separable_weights(axis):
    """For F_ij = d_j^2 (or d_i^2) FWSVD's error is the tail of the scaled matrix's spectrum: the optimum."""
    W, _ = problem()
    d = torch.rand(24 if axis == "in" else 40, dtype=torch.float64) + 0.1
    F = (d[None, :] ** 2).expand(40, 24) if axis == "in" else (d[:, None] ** 2).expand(40, 24)
    scaled = W * d if axis == "in" else d[:, None] * W
    s = torch.linalg.svdvals(scaled)
    result = factorize(
        W, 5, "fwsvd", importance=F.contiguous() / 40 if axis == "in" else F.contiguous() / 24, axis=axis
    )
    assert E(W, result, F) == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-9)
    assert result.info["axis"] == axis


def test_fwsvd_uniform_equals_svd_and_bad_axis():
    W, _ = problem()
    ones = torch.ones_like(W)
    assert E(W, factorize(W, 4, "fwsvd", importance=ones), ones) == pytest.approx(
        E(W, factorize(W, 4), ones), rel=1e-10
    )
    with pytest.raises(ValueError, match="axis"):
        factorize(W, 4, "fwsvd", importance=ones, axis="rows")
    with pytest.raises(ValueError, match="importance"):
        factorize(W, 4, "fwsvd")


@pytest.mark.parametrize("solver, options", CONFIGS, ids=CONFIG_IDS)
def test_tfwsvd_never_worse_than_fwsvd_start(solver, options):
    W, F = problem(seed=1)
    start = min(E(W, factorize(W, 4, "fwsvd", importance=F, axis=a), F) for a in ("in", "out"))
    result = factorize(W, 4, "tfwsvd", importance=F, solver=solver, max_iters=30, **options)
    assert E(W, result, F) <= start * (1 + 1e-12)
    # history is in normalized units, with weights below the 1e-6 floor raised to it
    assert result.info["solver"] == solver and result.history[0] == pytest.approx(
        start / result.info["scale"], rel=1e-4
    )
    assert min(result.history) == pytest.approx(E(W, result, normalize_importance(F)[0]), rel=1e-9)


def test_a_solver_that_only_worsens_returns_the_start():
    W, F = problem(seed=1)
    start = factorize(W, 4, "fwsvd", importance=F, axis="in")
    result = factorize(W, 4, "tfwsvd", importance=F, solver="adam", lr=10.0, max_iters=5, tol=0, init_axis="in")
    assert min(result.history[1:]) > result.history[0]  # every Adam step overshoots ...
    assert torch.equal(result.U, start.U) and torch.equal(result.V, start.V)  # ... so the start comes back


@pytest.mark.parametrize("cg_steps", [0, 1, 5])
def test_als_decreases_monotonically_and_beats_fwsvd_clearly(cg_steps):
    W, F = problem(seed=2)
    result = factorize(W, 4, "tfwsvd", importance=F, solver="als", max_iters=30, tol=0, cg_steps=cg_steps)
    h = result.history
    assert all(b <= a * (1 + 1e-12) for a, b in zip(h, h[1:]))
    assert h[-1] < 0.7 * h[0]  # element-wise weighting buys a lot over the separable approximation


def test_cg_with_r_steps_is_the_exact_als_step():
    """CG on an r x r SPD system is exact after r steps: one ALS iteration either way gives the same factors."""
    W, _ = problem(seed=9)
    F = torch.exp(torch.randn(W.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    exact = factorize(W, 4, "tfwsvd", importance=F, solver="als", max_iters=1, cg_steps=0, ridge=0.0)
    cg = factorize(W, 4, "tfwsvd", importance=F, solver="als", max_iters=1, cg_steps=4)
    few = factorize(W, 4, "tfwsvd", importance=F, solver="als", max_iters=1, cg_steps=1)
    assert torch.allclose(cg.U @ cg.V, exact.U @ exact.V, rtol=0, atol=1e-9)
    assert few.history[1] > exact.history[1] * (1 + 1e-6)  # one CG step is not yet the exact solve


def test_adam_default_step_improves_at_moderate_rank():
    """A step that ignores the rank overshoots at r = 32 with weights spanning ~10 decades (E never beats the start)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 160, generator=g, dtype=torch.float64)
    F = torch.exp(4 * torch.randn(64, 160, generator=g, dtype=torch.float64))
    history = factorize(W, 32, "tfwsvd", importance=F, solver="adam").history
    assert min(history) < 0.5 * history[0]


@pytest.mark.parametrize("solver, options", CONFIGS, ids=CONFIG_IDS)
def test_uniform_weights_match_plain_svd(solver, options):
    W, _ = problem(seed=3)
    ones = torch.ones_like(W)
    best = E(W, factorize(W, 6), ones)
    result = factorize(W, 6, "tfwsvd", importance=ones, solver=solver, max_iters=20, **options)
    assert E(W, result, ones) == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("solver, options", CONFIGS, ids=CONFIG_IDS)
def test_rank_r_ground_truth_is_recovered(solver, options):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(40, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 24, generator=g, dtype=torch.float64)
    _, F = problem(seed=5)
    result = factorize(W, 3, "tfwsvd", importance=F, solver=solver, max_iters=50, **options)
    assert torch.linalg.matrix_norm(result.U @ result.V - W) <= 1e-6 * torch.linalg.matrix_norm(W)


def test_als_recovers_low_rank_truth_from_a_poor_start():
    """Rank-r truth, weights that make FWSVD's separable approximation poor: ALS still gets E ~ 0."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 20, generator=g, dtype=torch.float64)
    outliers = torch.rand(30, 20, generator=g) < 0.1
    W_noisy = W + 5.0 * torch.randn(30, 20, generator=g, dtype=torch.float64) * outliers
    F = torch.where(outliers, 1e-9, 1.0).double()  # the corrupted entries carry (almost) no importance
    start = factorize(W_noisy, 2, "fwsvd", importance=F)
    result = factorize(W_noisy, 2, "tfwsvd", importance=F, solver="als", max_iters=200, tol=1e-14)
    error = torch.linalg.matrix_norm(result.U @ result.V - W) / torch.linalg.matrix_norm(W)
    assert error < 1e-3 < torch.linalg.matrix_norm(start.U @ start.V - W) / torch.linalg.matrix_norm(W)


def test_stopping_rules():
    W, F = problem(seed=7)
    capped = factorize(W, 4, "tfwsvd", importance=F, solver="adam", max_iters=5, tol=0)
    assert capped.info["iters"] == 5 and len(capped.history) == 6
    loose = factorize(W, 4, "tfwsvd", importance=F, solver="als", max_iters=500, tol=1e-2)
    assert loose.info["iters"] < 500
    with pytest.raises(ValueError, match="unknown solver"):
        factorize(W, 4, "tfwsvd", importance=F, solver="newton")
    with pytest.raises(ValueError, match="max_iter for solver 'als'"):
        factorize(W, 4, "tfwsvd", importance=F, max_iter=5)  # misspelt: must not be ignored
    with pytest.raises(ValueError, match="lr"):
        factorize(W, 4, "tfwsvd", importance=F, solver="em", lr=0.1)  # EM has no step size
    with pytest.raises(ValueError, match="init_axis"):
        factorize(W, 4, "tfwsvd", importance=F, init_axis="rows")


def test_float32_and_progress():
    W, F = problem(seed=8)
    calls = []
    result = factorize(
        W.float(),
        4,
        "tfwsvd",
        importance=F.float(),
        solver="als",
        max_iters=3,
        tol=0,
        progress=lambda d, t, m: calls.append((d, t)),
    )
    assert result.U.dtype == torch.float32 and calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    early = factorize(
        W, 4, "tfwsvd", importance=F, solver="als", max_iters=50, tol=0.5, progress=lambda d, t, m: calls.append((d, t))
    )
    assert early.info["iters"] < 50 and calls[-1] == (50, 50)  # an early stop still completes the bar
