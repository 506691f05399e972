"""asvd, svd_llm and kfac_svd: each exact for its own objective; safeguards for singular and indefinite moments."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank
from lowrank import factorize
from lowrank.data import batches
from lowrank.methods.kfac_svd import kfac_whitened
from lowrank.methods.roots import psd_root
from lowrank.methods.svd_llm import whitened
from lowrank.statistics import StatisticsSettings, statistics_for


def problem(out=12, inp=9, tokens=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    X = (
        torch.randn(inp, tokens, generator=g, dtype=torch.float64)
        * torch.linspace(0.1, 3.0, inp, dtype=torch.float64)[:, None]
    )
    Gf = torch.randn(out, 3 * out, generator=g, dtype=torch.float64)
    return W, X, X @ X.T / tokens, Gf @ Gf.T / (3 * out)


def acts(A, m=None):
    """Activation statistics as the resolver gives them (both keys of the 'activations' kind)."""
    return {"input_moment": A, "input_abs_mean": A.diagonal().sqrt() if m is None else m}


def tail(M, r):
    return float((torch.linalg.svdvals(M)[r:] ** 2).sum())


def test_svd_llm_is_exact_for_output_reconstruction():
    W, X, A, _ = problem()
    r = 4
    result = factorize(W, r, "svd_llm", stats=acts(A))
    err = float(((W - result.matrix()) @ X).square().sum()) / X.shape[1]
    assert err == pytest.approx(tail(W @ X, r) / X.shape[1], rel=1e-8)  # the rank-r optimum of ||(W - W')X||
    plain = factorize(W, r, "svd").matrix()
    assert err < float(((W - plain) @ X).square().sum()) / X.shape[1]
    assert result.info["regularizer"] == "none"


def test_svd_llm_with_identity_is_svd_and_kfac_with_identity_gradients_is_svd_llm():
    W, _, A, _ = problem()
    eye_in, eye_out = torch.eye(W.shape[1], dtype=W.dtype), torch.eye(W.shape[0], dtype=W.dtype)
    assert torch.allclose(
        factorize(W, 3, "svd_llm", stats=acts(eye_in)).matrix(), factorize(W, 3, "svd").matrix(), atol=1e-10
    )
    kfac = factorize(W, 3, "kfac_svd", stats={**acts(A), "grad_moment": eye_out}).matrix()
    assert torch.allclose(kfac, factorize(W, 3, "svd_llm", stats=acts(A)).matrix(), atol=1e-9)


def test_kfac_svd_is_exact_for_the_kronecker_fisher_loss():
    W, _, A, G = problem(seed=3)
    r = 5

    def loss(Wp):
        d = W - Wp
        return float(torch.trace(G @ d @ A @ d.T))

    result = factorize(W, r, "kfac_svd", stats={**acts(A), "grad_moment": G})
    LA, LG = torch.linalg.cholesky(A), torch.linalg.cholesky(G)
    assert loss(result.matrix()) == pytest.approx(tail(LG.T @ W @ LA, r), rel=1e-8)
    for other in ("svd", "svd_llm"):
        Wp = factorize(W, r, other, stats=acts(A)).matrix()
        assert loss(result.matrix()) <= loss(Wp) + 1e-12
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # no nearby rank-r point is better
        U, V = result.U + 1e-3 * torch.randn(result.U.shape, generator=g, dtype=W.dtype), result.V
        assert loss(result.matrix()) <= loss(U @ V) + 1e-12


def test_asvd_is_exact_for_its_scaled_objective_and_alpha_zero_is_svd():
    W, X, _, _ = problem(seed=5)
    m = X.abs().mean(dim=1)
    r = 3
    result = factorize(W, r, "asvd", stats=acts(torch.eye(W.shape[1], dtype=W.dtype), m), alpha=0.5)
    S = torch.diag(m**0.5)
    assert float(((W - result.matrix()) @ S).square().sum()) == pytest.approx(tail(W @ S, r), rel=1e-8)
    assert torch.allclose(
        factorize(W, r, "asvd", stats=acts(torch.eye(W.shape[1], dtype=W.dtype), m), alpha=0.0).matrix(),
        factorize(W, r, "svd").matrix(),
        atol=1e-10,
    )


def test_rank_deficient_and_indefinite_moments_are_regularized_not_errors():
    W, X, _, _ = problem(tokens=4)  # 4 tokens for 9 features: A has rank 4
    A = X @ X.T / 4
    result = factorize(W, 3, "svd_llm", stats=acts(A))
    assert result.info["regularizer"] != "none" and torch.isfinite(result.matrix()).all()
    indefinite = A - 0.5 * torch.eye(9, dtype=A.dtype)  # a negative eigenvalue: no jitter that small fixes it
    root = psd_root(indefinite)
    assert root.regularizer.startswith("eigen") and torch.isfinite(root.L_inv).all()
    out = factorize(
        W,
        3,
        "kfac_svd",
        stats={**acts(indefinite, torch.ones(9, dtype=A.dtype)), "grad_moment": torch.zeros(12, 12, dtype=A.dtype)},
    )
    assert torch.isfinite(out.matrix()).all() and out.info["grad_regularizer"] == "identity (no data)"


def test_methods_declare_their_statistics():
    assert lowrank.get_method("asvd").needs == ("activations",)
    assert lowrank.get_method("svd_llm").needs == ("activations",)
    assert lowrank.get_method("kfac_svd").needs == ("activations", "gradients")
    W = torch.randn(6, 5)
    with pytest.raises(ValueError, match="needs activations"):
        factorize(W, 2, "svd_llm")
    with pytest.raises(ValueError, match="expected"):
        factorize(W, 2, "svd_llm", stats=acts(torch.eye(6)))


def test_moments_of_a_real_pass_and_compression(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    settings = StatisticsSettings(num_batches=2, batch_size=4)
    stats = statistics_for(tiny_bert, sentiment_csv, ("activations", "gradients"), settings)
    name, module = next(iter(lowrank.compressible_linears(tiny_bert.model).items()))
    A, G, m = stats[name]["input_moment"], stats[name]["grad_moment"], stats[name]["input_abs_mean"]
    assert (
        A.shape == (module.in_features,) * 2
        and G.shape == (module.out_features,) * 2
        and m.shape == (module.in_features,)
    )
    assert torch.allclose(A, A.T) and torch.linalg.eigvalsh(A.double()).min() > -1e-5 and (m >= 0).all()
    # A is the mean over real (unpadded) tokens of x x^T: check against a direct hook on the same batches
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        for batch in batches(
            lowrank.load_task(sentiment_csv), tiny_bert.tokenizer, "train", 4, 128, shuffle=True, seed=0, limit=2
        ):
            tiny_bert.model(**{k: v for k, v in batch.items() if k != "labels"})
            seen[-1] = seen[-1][batch["attention_mask"].bool()]
    handle.remove()
    x = torch.cat(seen).double()
    assert torch.allclose(A.double(), x.T @ x / len(x), rtol=1e-4, atol=1e-6)
    again = statistics_for(tiny_bert, sentiment_csv, ("activations", "gradients"), settings)  # cached
    assert torch.equal(again[name]["grad_moment"], G)
    for method in ("asvd", "svd_llm", "kfac_svd"):
        small = lowrank.compress(tiny_bert, 0.5, method, stats=stats)
        assert len(small.model.lowrank_info.ranks) == 12


def test_tfwsvd_best_start_includes_kfac_when_the_moments_are_there():
    W, _, A, G = problem(seed=9)
    g = torch.Generator().manual_seed(2)
    F = torch.rand(W.shape, generator=g, dtype=W.dtype) ** 3

    def error(r):
        return float((F * (W - r.matrix()) ** 2).sum())

    stats = {"fisher": F, **acts(A), "grad_moment": G}
    starts = {
        init: factorize(W, 4, "tfwsvd", stats=stats, init_axis=init, max_iters=0) for init in ("in", "out", "kfac")
    }
    best = factorize(W, 4, "tfwsvd", stats=stats, max_iters=0)
    assert error(best) == pytest.approx(min(error(r) for r in starts.values()), rel=1e-12)
    assert starts["kfac"].info["init"] == "kfac_svd"
    with pytest.raises(ValueError, match="needs input_moment"):
        factorize(W, 4, "tfwsvd", importance=F, init_axis="kfac")


def moment(n, rank, seed, shift=0.0):
    """A random PSD moment of ``rank`` (``X X^T / rank``), minus ``shift * I`` (indefinite when ``shift > 0``)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, n, dtype=torch.float64)[:, None]
    return X @ X.T / rank - shift * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize(
    ("a_rank", "a_shift", "a_regularizer"),
    [(40, 0.0, "none"), (7, 0.0, "jitter"), (40, 0.5, "eigen")],  # full rank; rank-deficient; indefinite
)
def test_the_targets_roots_without_inverses_give_the_singular_values_of_the_factorizations_roots(
    a_rank, a_shift, a_regularizer
):
    """The spectra's targets take the roots without their inverses: same regularizer, same L, and the singular values
    of L_G^T W L_A (kfac_svd) and W L_A (svd_llm) that the factorizations' roots (with inverses) give."""
    W = torch.randn(12, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    A, G = moment(20, a_rank, 2, a_shift), moment(12, 5, 3)  # G rank-deficient too
    for M in (A, G):
        with_inverse, without = psd_root(M), psd_root(M, inverse=False)
        assert without.L_inv is None and without.regularizer == with_inverse.regularizer
        torch.testing.assert_close(without.L, with_inverse.L, rtol=0, atol=0)
    assert psd_root(A).regularizer.startswith(a_regularizer)
    L_A, L_G = psd_root(A).L, psd_root(G).L
    stats = {"input_moment": A, "grad_moment": G}
    for target, reference in ((kfac_whitened, L_G.T @ W @ L_A), (whitened, W @ L_A)):
        s = torch.linalg.svdvals(target(W, stats))
        torch.testing.assert_close(s, torch.linalg.svdvals(reference), rtol=1e-6, atol=1e-6 * float(s[0]))


def test_kfac_target_singular_values_do_not_depend_on_the_square_root():
    """For positive definite moments the Cholesky roots give the spectrum of the symmetric roots G^1/2 W A^1/2."""
    W = torch.randn(12, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    A, G = moment(20, 60, 2), moment(12, 40, 3)

    def sym_root(M):
        lam, Q = torch.linalg.eigh(M)
        return Q @ torch.diag(lam.sqrt()) @ Q.T

    s = torch.linalg.svdvals(kfac_whitened(W, {"input_moment": A, "grad_moment": G}))
    torch.testing.assert_close(s, torch.linalg.svdvals(sym_root(G) @ W @ sym_root(A)), rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 24),
    rank=st.integers(1, 30),
    shift=st.sampled_from([0.0, 0.0, 1e-3, 0.5]),
    zero_rows=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_roots_without_inverses_choose_the_same_regularizer_and_root(n, rank, shift, zero_rows, seed):
    """Any PSD (or slightly indefinite) moment, with dead features: the inverse-free root is the same L, regularizer
    included, and the inverse of the full root is finite."""
    M = moment(n, rank, seed, shift)
    M[:zero_rows] = 0
    M[:, :zero_rows] = 0
    with_inverse, without = psd_root(M), psd_root(M, inverse=False)
    assert without.regularizer == with_inverse.regularizer and without.L_inv is None
    torch.testing.assert_close(without.L, with_inverse.L, rtol=0, atol=0)
    assert torch.isfinite(with_inverse.L_inv).all() and torch.isfinite(without.L).all()


@settings(max_examples=60, deadline=None)
@given(
    out=st.integers(1, 24),
    inp=st.integers(1, 24),
    method=st.sampled_from(["svd_llm", "kfac_svd"]),
    samples=st.sampled_from([3.0, 3.0, 0.5, 0.1]),
    shift=st.sampled_from([0.0, 0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_the_spectrum_from_the_smaller_gram_is_that_of_the_target(out, inp, method, samples, shift, seed):
    """Either side (out < in, out = in, out > in), moments positive definite, rank-deficient (fewer samples than
    features: jitter) or indefinite (eigen fallback): the singular values from the Gram's eigenvalues (no SVD) are
    the target's, to float64's square-root precision of the largest."""
    W = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stats = {
        "input_moment": moment(inp, max(1, int(samples * inp)), seed + 1, shift),
        "grad_moment": moment(out, max(1, int(samples * out)), seed + 2),
    }
    spec = lowrank.get_method(method)
    s = spec.target_singular_values(W, stats)
    reference = torch.linalg.svdvals(spec.target(W, stats)).double()
    assert s.shape == reference.shape and s.dtype == torch.float64
    assert (s[:-1] >= s[1:]).all() and (s >= 0).all()
    torch.testing.assert_close(s, reference, rtol=1e-6, atol=1e-6 * float(reference[0]))


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_the_gram_refuses_moments_that_do_not_fit_the_weight(shape):
    W = torch.randn(*shape, dtype=torch.float64)
    wrong = {"input_moment": moment(shape[1] + 1, 30, 0), "grad_moment": moment(shape[0], 30, 1)}
    for method in ("svd_llm", "kfac_svd"):
        with pytest.raises(ValueError, match="shape"):
            lowrank.get_method(method).target_singular_values(W, wrong)
