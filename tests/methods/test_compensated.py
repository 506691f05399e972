"""Error-compensated factorization: the closed form is the rank-r least-squares optimum of ||W X - B X_hat||_F
(and of its output-gradient-weighted form), equals SVD-LLM when X_hat = X, and the unconstrained solution at full rank."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import factorize
from lowrank.methods.compensated import ALPHA, VALIDATE, VALIDATIONS, Folds, compensated_factors


def problem(out, inp, tokens, seed, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    X = (
        torch.randn(inp, tokens, generator=g, dtype=torch.float64)
        * torch.linspace(0.2, 2.0, inp, dtype=torch.float64)[:, None]
    )
    X_hat = X + noise * torch.randn(inp, tokens, generator=g, dtype=torch.float64)
    Gf = torch.randn(out, 2 * out, generator=g, dtype=torch.float64)
    return W, X, X_hat, Gf @ Gf.T / (2 * out)


def moments(X, X_hat):
    tokens = X.shape[1]
    return X @ X_hat.T / tokens, X_hat @ X_hat.T / tokens


def swept(X, X_hat, G=None):
    """The compensation statistics of the block sweep for tokens ``X``, ``X_hat`` (in, T), the first and second
    half of the tokens as the two folds; with ``G`` the gradient moment too."""
    M, C = moments(X, X_hat)
    halves = [slice(0, X.shape[1] // 2), slice(X.shape[1] // 2, X.shape[1])]
    folds = [moments(X[:, h], X_hat[:, h]) for h in halves]
    stats = {
        "cross_moment": M,
        "compressed_moment": C,
        "fold_cross_moment": torch.stack([f[0] for f in folds]),
        "fold_compressed_moment": torch.stack([f[1] for f in folds]),
        "fold_tokens": torch.tensor([float(X[:, h].shape[1]) for h in halves], dtype=torch.float64),
    }
    return stats | ({} if G is None else {"grad_moment": G})


def error(W, B, X, X_hat, G=None):
    D = W @ X - B @ X_hat
    return float(D.square().sum() if G is None else torch.trace(G @ D @ D.T))


def alternating_least_squares(Y, Z, rank, seed, steps=500):
    """Brute force: min ||Y - P Q Z||_F over P (out, r), Q (r, in) by exact alternating least-squares steps."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(rank, Z.shape[0], generator=g, dtype=torch.float64)
    ZZ_inv_Z = torch.linalg.solve(Z @ Z.T, Z)  # (in, T): Z^T (Z Z^T)^-1, transposed
    for _ in range(steps):
        P = torch.linalg.lstsq((Q @ Z).T, Y.T).solution.T
        Q = torch.linalg.solve(P.T @ P, P.T @ Y @ ZZ_inv_Z.T)
    return P @ Q


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(2, 7),
    inp=st.integers(2, 7),
    extra=st.integers(2, 10),
    rank_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    weighted=st.booleans(),
)
def test_closed_form_is_the_least_squares_optimum(out, inp, extra, rank_frac, seed, weighted):
    W, X, X_hat, G = problem(out, inp, inp + extra, seed)
    G = G if weighted else None
    rank = 1 + int(rank_frac * (min(out, inp) - 1))
    M, C = moments(X, X_hat)
    B = compensated_factors(W, rank, M, C, G).matrix()
    assert torch.linalg.matrix_rank(B) <= rank
    best = error(W, B, X, X_hat, G)
    L_G = torch.eye(out, dtype=W.dtype) if G is None else torch.linalg.cholesky(G)
    brute = alternating_least_squares(L_G.T @ W @ X, X_hat, rank, seed)  # over L_G^T B, free as B is
    assert float((L_G.T @ W @ X - brute @ X_hat).square().sum()) == pytest.approx(best, rel=1e-6, abs=1e-9)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(5):
        P = torch.randn(out, rank, generator=g, dtype=W.dtype)
        Q = torch.randn(rank, inp, generator=g, dtype=W.dtype)
        U, V = compensated_factors(W, rank, M, C, G)
        assert best <= error(W, (U + 1e-3 * P) @ (V + 1e-3 * Q), X, X_hat, G)
    svd_llm = factorize(W, rank, "svd_llm", stats={"input_moment": C, "input_abs_mean": C.diagonal().sqrt()})
    assert best <= error(W, svd_llm.matrix(), X, X_hat, G) * (1 + 1e-9) + 1e-9


@pytest.mark.parametrize("weighted", [False, True])
def test_full_rank_is_the_unconstrained_least_squares_solution(weighted):
    W, X, X_hat, G = problem(6, 5, 30, seed=4)
    M, C = moments(X, X_hat)
    B = compensated_factors(W, 5, M, C, G if weighted else None).matrix()
    lstsq = torch.linalg.lstsq(X_hat.T, (W @ X).T).solution.T  # argmin_B ||W X - B X_hat||, any G > 0
    assert torch.allclose(B, lstsq, atol=1e-9)
    assert torch.allclose(B, W @ M @ torch.linalg.inv(C), atol=1e-9)


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_equals_svd_llm_and_kfac_svd_when_the_inputs_are_the_dense_ones(rank):
    W, X, _, G = problem(7, 6, 40, seed=2)
    _, C = moments(X, X)
    stats = {"input_moment": C, "input_abs_mean": C.diagonal().sqrt()}
    plain = compensated_factors(W, rank, C, C)
    assert torch.allclose(plain.matrix(), factorize(W, rank, "svd_llm", stats=stats).matrix(), atol=1e-10)
    weighted = compensated_factors(W, rank, C, C, G).matrix()
    kfac = factorize(W, rank, "kfac_svd", stats={**stats, "grad_moment": G}).matrix()
    assert torch.allclose(weighted, kfac, atol=1e-9)
    assert plain.info == {"regularizer": "none"}


def test_singular_moment_is_regularized_and_bad_shapes_are_refused():
    W, X, X_hat, _ = problem(4, 5, 30, seed=6)
    X_hat[2] = 0.0  # a dead feature: C is singular
    M, C = moments(X, X_hat)
    result = compensated_factors(W, 2, M, C)
    assert torch.isfinite(result.matrix()).all() and result.info["regularizer"] != "none"
    _, C_dense = moments(X_hat, X_hat)  # X_hat = X, singular: the same regularized solution as svd_llm
    stats = {"input_moment": C_dense, "input_abs_mean": C_dense.diagonal().sqrt()}
    expected = factorize(W, 2, "svd_llm", stats=stats)
    assert torch.allclose(compensated_factors(W, 2, C_dense, C_dense).matrix(), expected.matrix(), atol=1e-9)
    with pytest.raises(ValueError, match="do not fit"):
        compensated_factors(W, 2, M[:4, :4], C)
    with pytest.raises(ValueError, match="grad_moment"):
        compensated_factors(W, 2, M, C, torch.eye(5, dtype=W.dtype))


@pytest.mark.parametrize("rank", [2, 5])
def test_kfac_svd_compensated_is_registered_as_the_weighted_closed_form(rank):
    """The registered K-FAC form is the closed form with the gradient moment; exact least squares at full rank for
    any positive definite G; kfac_svd when X_hat = X."""
    W, X, X_hat, G = problem(6, 5, 30, seed=8)
    M, C = moments(X, X_hat)
    stats = swept(X, X_hat, G)
    B = factorize(W, rank, "kfac_svd_compensated", stats=stats, alpha=1.0, validate="none").matrix()
    assert torch.allclose(B, compensated_factors(W, rank, M, C, G).matrix(), atol=1e-12)
    if rank == 5:
        assert torch.allclose(B, torch.linalg.lstsq(X_hat.T, (W @ X).T).solution.T, atol=1e-9)
    _, A = moments(X, X)
    same = factorize(W, rank, "kfac_svd_compensated", stats=swept(X, X, G))
    kfac = factorize(W, rank, "kfac_svd", stats={"input_moment": A, "input_abs_mean": A.diagonal(), "grad_moment": G})
    assert torch.allclose(same.matrix(), kfac.matrix(), atol=1e-9)
    with pytest.raises(ValueError, match="needs compensation, gradients"):
        factorize(W, rank, "kfac_svd_compensated", stats={})


def test_compensation_is_one_setting():
    """with_compensation maps a data-aware method to its compensated form where a block sweep runs; COMPENSATE is
    the one default; asking explicitly for what cannot be compensated is refused in one line."""
    from lowrank.methods import registry

    assert registry.with_compensation("kfac_svd", True) == "kfac_svd_compensated"
    assert registry.with_compensation("svd_llm", True) == "svd_llm_compensated"
    assert registry.with_compensation("kfac_svd", False) == "kfac_svd"
    assert registry.with_compensation("kfac_svd", None) == (
        "kfac_svd_compensated" if registry.COMPENSATE["causal-lm"] else "kfac_svd"
    )
    assert (
        registry.with_compensation("svd", None) == "svd"
        and registry.with_compensation("kfac_svd", None, False) == "kfac_svd"
    )
    for name, sweepable in (("svd", True), ("kfac_svd", False)):
        with pytest.raises(ValueError, match="cannot compensate") as err:
            registry.with_compensation(name, True, sweepable)
        assert "\n" not in str(err.value)


@settings(max_examples=20, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0),
    rank_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    weighted=st.booleans(),
)
def test_partial_compensation_is_the_optimum_of_the_mixed_objective(alpha, rank_frac, seed, weighted):
    """(1 - alpha) ||W X_hat - B X_hat||^2 + alpha ||W X - B X_hat||^2 = ||W X_alpha - B X_hat||^2 + const with
    X_alpha = (1 - alpha) X_hat + alpha X: the closed form equals the brute-force optimum of that problem."""
    W, X, X_hat, G = problem(5, 6, 15, seed)
    G = G if weighted else None
    rank = 1 + int(rank_frac * 4)
    M, C = moments(X, X_hat)
    B = compensated_factors(W, rank, M, C, G, alpha=alpha).matrix()
    X_alpha = (1 - alpha) * X_hat + alpha * X
    L_G = torch.eye(5, dtype=W.dtype) if G is None else torch.linalg.cholesky(G)
    brute = alternating_least_squares(L_G.T @ W @ X_alpha, X_hat, rank, seed)
    best = float((L_G.T @ W @ X_alpha - L_G.T @ B @ X_hat).square().sum())
    assert float((L_G.T @ W @ X_alpha - brute @ X_hat).square().sum()) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_alpha_zero_is_svd_llm_on_the_compressed_inputs_and_alpha_is_checked():
    W, X, X_hat, G = problem(6, 5, 30, seed=3)
    M, C = moments(X, X_hat)
    stats = {"input_moment": C, "input_abs_mean": C.diagonal().sqrt()}
    expected = factorize(W, 3, "svd_llm", stats=stats).matrix()
    assert torch.allclose(compensated_factors(W, 3, M, C, alpha=0.0).matrix(), expected, atol=1e-10)
    stats = swept(X, X_hat, G)
    default = factorize(W, 3, "svd_llm_compensated", stats=stats).matrix()  # the methods' alpha and validation
    validated = compensated_factors(W, 3, M, C, alpha=ALPHA, folds=Folds.of(stats), validate=VALIDATE).matrix()
    assert torch.allclose(default, validated, atol=1e-12)
    half = factorize(W, 3, "kfac_svd_compensated", stats=stats, alpha=0.5, validate="none").matrix()
    assert torch.allclose(half, compensated_factors(W, 3, M, C, G, alpha=0.5).matrix(), atol=1e-12)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            factorize(W, 3, "svd_llm_compensated", stats=stats, alpha=bad)
    with pytest.raises(ValueError, match="alpha"):
        factorize(W, 3, "svd_llm_compensated", stats=stats, alpha="half")
    with pytest.raises(ValueError, match="validate"):
        factorize(W, 3, "svd_llm_compensated", stats=stats, validate="yes")
    with pytest.raises(ValueError, match="fold moments"):
        compensated_factors(W, 3, M, C, validate="held-out")
    with pytest.raises(ValueError, match="validate must be one of none, two-fold, held-out"):
        compensated_factors(W, 3, M, C, folds=Folds.of(stats), validate="bogus")


def halves(X):
    return [slice(0, X.shape[1] // 2), slice(X.shape[1] // 2, X.shape[1])]


def fold_error(W, s, X, X_hat, fit, check, L):
    """||L^T W ((X - X_hat) - s D X_hat)||^2 on the tokens ``check``, ``D`` the least-squares correction fitted on
    the tokens ``fit``."""
    D = torch.linalg.lstsq(X_hat[:, fit].T, (X[:, fit] - X_hat[:, fit]).T).solution.T
    E = (X[:, check] - X_hat[:, check]) - s * D @ X_hat[:, check]
    return float((L.T @ W @ E).square().sum())


def held_out_error(W, s, X, X_hat, G, validate):
    """Brute force on the tokens: two-fold, each half checked against the correction fitted on the other; held-out,
    the second half checked against the correction fitted on the first."""
    L = torch.eye(W.shape[0], dtype=W.dtype) if G is None else torch.linalg.cholesky(G)
    first, second = halves(X)
    if validate == "held-out":
        return fold_error(W, s, X, X_hat, first, second, L)
    return fold_error(W, s, X, X_hat, first, second, L) + fold_error(W, s, X, X_hat, second, first, L)


def multiplier(W, X, X_hat, validate, G=None, alpha=1.0):
    stats = swept(X, X_hat) | ({} if G is None else {"grad_moment": G})
    method = "svd_llm_compensated" if G is None else "kfac_svd_compensated"
    return factorize(W, min(W.shape), method, stats=stats, alpha=alpha, validate=validate)


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(2, 6),
    inp=st.integers(2, 6),
    extra=st.integers(4, 30),
    noise=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
    weighted=st.booleans(),
    validate=st.sampled_from(VALIDATIONS[1:]),
)
def test_correction_multiplier_is_the_held_out_optimum(out, inp, extra, noise, seed, weighted, validate):
    """s* minimizes the held-out error of the correction over [0, 1] (brute force on the tokens); at full rank the
    layer is the dense map composed with the correction it applies, shrunk by s* (held-out: fitted on the first half)."""
    W, X, X_hat, G = problem(out, inp, 2 * (inp + extra), seed, noise)
    G = G if weighted else None
    made = multiplier(W, X, X_hat, validate, G)
    s = made.info["correction_multiplier"]
    best = min(held_out_error(W, g, X, X_hat, G, validate) for g in torch.linspace(0, 1, 201).tolist())
    assert 0.0 <= s <= 1.0
    assert held_out_error(W, s, X, X_hat, G, validate) <= best * (1 + 1e-9) + 1e-12
    fit = halves(X)[0] if validate == "held-out" else slice(None)
    D = torch.linalg.lstsq(X_hat[:, fit].T, (X[:, fit] - X_hat[:, fit]).T).solution.T
    expected = W @ (torch.eye(inp, dtype=W.dtype) + s * D)
    assert torch.allclose(made.matrix(), expected, atol=1e-8 * (1 + float(expected.abs().max())))


@pytest.mark.parametrize("validate", VALIDATIONS[1:])
def test_validation_keeps_a_correction_that_holds_and_drops_one_fitted_to_noise(validate):
    """A systematic input error learned from many tokens is kept (s* near 1); an error that is noise, independent of
    x_hat, fitted from few tokens per feature, is shrunk, and the validated layer beats the unvalidated one on
    fresh tokens."""
    g = torch.Generator().manual_seed(0)
    out, inp = 8, 24
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    mix = torch.eye(inp, dtype=torch.float64) + 0.3 * torch.randn(inp, inp, generator=g, dtype=torch.float64)

    def tokens(n, systematic):
        X_hat = torch.randn(inp, n, generator=g, dtype=torch.float64)
        noise = torch.randn(inp, n, generator=g, dtype=torch.float64)
        return (mix @ X_hat if systematic else X_hat + noise), X_hat

    X, X_hat = tokens(4000, systematic=True)
    assert multiplier(W, X, X_hat, validate).info["correction_multiplier"] > 0.95
    X, X_hat = tokens(60, systematic=False)  # 2.5 tokens per input feature
    stats = swept(X, X_hat)
    validated = factorize(W, 4, "svd_llm_compensated", stats=stats, alpha=1.0, validate=validate)
    assert validated.info["correction_multiplier"] < 0.3
    unvalidated = factorize(W, 4, "svd_llm_compensated", stats=stats, alpha=1.0, validate="none")
    fresh_X, fresh_X_hat = tokens(20_000, systematic=False)
    assert error(W, validated.matrix(), fresh_X, fresh_X_hat) < 0.8 * error(
        W, unvalidated.matrix(), fresh_X, fresh_X_hat
    )


@pytest.mark.parametrize("validate", VALIDATIONS[1:])
def test_an_empty_fold_leaves_the_correction_unvalidated(validate):
    W, X, X_hat, _ = problem(4, 3, 20, seed=5)
    stats = swept(X, X_hat)
    stats["fold_tokens"] = torch.tensor([20.0, 0.0], dtype=torch.float64)
    made = factorize(W, 2, "svd_llm_compensated", stats=stats, alpha=1.0, validate=validate)
    assert made.info["correction_multiplier"] == "unvalidated"
    M, C = moments(X, X_hat)
    assert torch.allclose(made.matrix(), compensated_factors(W, 2, M, C).matrix(), atol=1e-12)
