import pytest
import torch

from lowrank import load_task
from lowrank.data.batches import batches
from lowrank.models.architectures import compressible_linears
from lowrank.statistics import StatisticsSettings, select, statistics_for


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))


def brute_force_fisher(loaded, task, batch_size, num_batches):
    """Average of squared per-example gradients, one backward pass per example."""
    linears = compressible_linears(loaded.model)
    sums = {n: torch.zeros_like(m.weight) for n, m in linears.items()}
    count = 0
    for batch in batches(task, loaded.tokenizer, "train", batch_size, 128, shuffle=True, seed=0, limit=num_batches):
        for i in range(batch["input_ids"].shape[0]):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            if "attention_mask" in one:  # drop this example's padding
                keep = one["attention_mask"][0].bool()
                one = {k: (v[:, keep] if v.ndim == 2 and k != "labels" else v) for k, v in one.items()}
            loaded.model.zero_grad()
            loaded.model(**one).loss.backward()
            for n, m in linears.items():
                sums[n] += m.weight.grad.square()
            count += 1
    return {n: s / count for n, s in sums.items()}


def test_hook_fisher_equals_per_example_gradients(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    fisher = select(
        statistics_for(tiny_bert, task, ("fisher",), StatisticsSettings(num_batches=2, batch_size=4), use_cache=False),
        "fisher",
    )
    expected = brute_force_fisher(tiny_bert, task, 4, 2)
    assert set(fisher) == set(expected)
    for name in fisher:
        assert fisher[name].shape == expected[name].shape
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-3, atol=1e-12)


def test_statistics_pass_computes_no_weight_gradients_and_restores_the_flags(tiny_bert, sentiment_csv):
    """The pass freezes the weights (activation gradients only, lowrank.statistics.passes) and gives every
    parameter its requires_grad back: a parameter frozen by the user stays frozen, the others train again."""
    model = tiny_bert.model
    first, second = list(compressible_linears(model).values())[:2]
    first.weight.requires_grad_(False)
    formed = []
    handle = second.weight.register_hook(formed.append)  # fires whenever autograd forms this dW
    try:
        select(
            statistics_for(
                tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=1, batch_size=4), use_cache=False
            ),
            "fisher",
        )
        assert formed == []
        assert not first.weight.requires_grad
        assert all(p.requires_grad for p in model.parameters() if p is not first.weight)
    finally:
        handle.remove()
        first.weight.requires_grad_(True)


def test_lm_fisher_and_sampled_labels(tiny_llama, text_task, tiny_bert, sentiment_csv):
    fisher = select(
        statistics_for(
            tiny_llama,
            text_task,
            ("fisher",),
            StatisticsSettings(num_batches=1, batch_size=2, max_length=16),
            use_cache=False,
        ),
        "fisher",
    )
    assert len(fisher) == 14 and all((f >= 0).all() and f.sum() > 0 for f in fisher.values())
    sampled = select(
        statistics_for(
            tiny_bert,
            sentiment_csv,
            ("fisher",),
            StatisticsSettings(num_batches=1, batch_size=4, labels="sampled"),
            use_cache=False,
        ),
        "fisher",
    )
    data = select(
        statistics_for(
            tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=1, batch_size=4), use_cache=False
        ),
        "fisher",
    )
    name = next(iter(sampled))
    assert sampled[name].sum() > 0 and not torch.equal(sampled[name], data[name])


def test_fisher_is_cached_on_disk(tiny_bert, sentiment_csv, tmp_path):
    first = select(
        statistics_for(tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=1, batch_size=4)), "fisher"
    )
    files = list((tmp_path / "fisher").glob("*.safetensors"))
    assert len(files) == 1
    again = select(
        statistics_for(tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=1, batch_size=4)), "fisher"
    )
    assert all(torch.equal(first[n], again[n]) for n in first)
    with torch.no_grad():  # a changed model gets its own cache entry
        next(iter(compressible_linears(tiny_bert.model).values())).weight.mul_(2)
    select(
        statistics_for(tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=1, batch_size=4)), "fisher"
    )
    assert len(list((tmp_path / "fisher").glob("*.safetensors"))) == 2


def test_bad_arguments(tiny_bert, sentiment_csv):
    with pytest.raises(ValueError, match="labels"):
        select(statistics_for(tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(labels="guess")), "fisher")
    with pytest.raises(ValueError, match="positive"):
        select(statistics_for(tiny_bert, sentiment_csv, ("fisher",), StatisticsSettings(num_batches=0)), "fisher")


def per_example_gradients(loaded, task, name, batch_size, num_batches):
    """``dl_n/dW`` of one layer for every example, one backward pass per example (eval mode)."""
    loaded.model.eval()
    weight, grads = loaded.model.get_submodule(name).weight, []
    for batch in batches(task, loaded.tokenizer, "train", batch_size, 128, shuffle=True, seed=0, limit=num_batches):
        for i in range(batch["input_ids"].shape[0]):
            loaded.model.zero_grad()
            loaded.model(**{k: v[i : i + 1] for k, v in batch.items()}).loss.backward()
            grads.append(weight.grad.detach().clone())
    return torch.stack(grads)


def test_taylor_estimate_is_the_full_fisher_quadratic_form(tiny_bert, sentiment_csv):
    from lowrank.statistics.taylor import loss_change_taylor

    task = load_task(sentiment_csv)
    name = "bert.encoder.layer.1.intermediate.dense"
    weight = tiny_bert.model.get_submodule(name).weight
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    estimate = loss_change_taylor(tiny_bert, task, {name: delta}, StatisticsSettings(num_batches=2, batch_size=4))[name]
    G = per_example_gradients(tiny_bert, task, name, 4, 2)  # (N, out, in)
    s = (G * delta).sum(dim=(1, 2)).double()
    assert estimate["first_order"] == pytest.approx(float(s.mean()), rel=1e-4, abs=1e-9)
    assert estimate["second_order"] == pytest.approx(0.5 * float(s.square().mean()), rel=1e-4)
    assert estimate["total"] == pytest.approx(estimate["first_order"] + estimate["second_order"])
    # a change of one entry: the full quadratic form is the diagonal Fisher's 0.5 F_ij dW_ij^2
    single = torch.zeros_like(delta)
    single[3, 5] = 0.1
    fisher = select(
        statistics_for(tiny_bert, task, ("fisher",), StatisticsSettings(num_batches=2, batch_size=4), use_cache=False),
        "fisher",
    )[name]
    one = loss_change_taylor(tiny_bert, task, {name: single}, StatisticsSettings(num_batches=2, batch_size=4))[name]
    assert one["second_order"] == pytest.approx(0.5 * float(fisher[3, 5]) * 0.01, rel=1e-4)
    with pytest.raises(ValueError, match="shape"):
        loss_change_taylor(tiny_bert, task, {name: delta.T}, StatisticsSettings(num_batches=1, batch_size=4))
    with pytest.raises(ValueError, match="not compressible"):
        loss_change_taylor(
            tiny_bert, task, {"bert.pooler.dense": delta}, StatisticsSettings(num_batches=1, batch_size=4)
        )


def test_svd_loss_change_is_the_taylor_estimate_of_the_truncation_residual(tiny_bert, sentiment_csv):
    from lowrank.statistics.taylor import loss_change_taylor, svd_loss_change

    name = "bert.encoder.layer.0.attention.self.query"
    W = tiny_bert.model.get_submodule(name).weight.detach()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    residual = (U[:, :5] * S[:5]) @ Vh[:5] - W
    sampling = {"num_batches": 2, "batch_size": 4, "split": "validation"}
    expected = loss_change_taylor(tiny_bert, sentiment_csv, {name: residual}, StatisticsSettings(**sampling))[name]
    got = svd_loss_change(tiny_bert, sentiment_csv, {name: 5}, StatisticsSettings(**sampling))[name]
    assert got["first_order"] == pytest.approx(expected["first_order"], rel=1e-3, abs=1e-8)
    assert got["second_order"] == pytest.approx(expected["second_order"], rel=1e-3, abs=1e-10)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        svd_loss_change(tiny_bert, sentiment_csv, {name: 0}, StatisticsSettings(**sampling))
    with pytest.raises(ValueError, match="not compressible Linear layers"):
        svd_loss_change(tiny_bert, sentiment_csv, {"bert.pooler.dense": 2}, StatisticsSettings(**sampling))


def brute_force_sampled_fisher(loaded, task, batch_size, num_batches, per_example):
    """True Fisher by its definition: ``per_example`` labels drawn from each batch's predictions (the estimator's
    generator and order), then one backward pass per (example, label), squared gradients averaged."""
    linears = compressible_linears(loaded.model)
    sums = {n: torch.zeros_like(m.weight) for n, m in linears.items()}
    generator, count = torch.Generator().manual_seed(0), 0
    for batch in batches(task, loaded.tokenizer, "train", batch_size, 128, shuffle=True, seed=0, limit=num_batches):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            probs = loaded.model(**inputs).logits.float().softmax(-1)
        drawn = torch.multinomial(probs, per_example, replacement=True, generator=generator)
        for i in range(batch["input_ids"].shape[0]):
            for label in drawn[i]:
                loaded.model.zero_grad()
                logits = loaded.model(**{k: v[i : i + 1] for k, v in inputs.items()}).logits
                torch.nn.functional.cross_entropy(logits, label.view(1)).backward()
                for n, m in linears.items():
                    sums[n] += m.weight.grad.square()
                count += 1
    return {n: s / count for n, s in sums.items()}


def test_sampled_fisher_averages_several_labels_per_example(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    settings = StatisticsSettings(num_batches=2, batch_size=4, labels="sampled", labels_per_example=3)
    fisher = select(statistics_for(tiny_bert, task, ("fisher",), settings, use_cache=False), "fisher")
    expected = brute_force_sampled_fisher(tiny_bert, task, 4, 2, 3)
    for name in fisher:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-3, atol=1e-12)
    one = select(
        statistics_for(tiny_bert, task, ("fisher",), settings.with_(labels_per_example=1), use_cache=False), "fisher"
    )
    assert not torch.equal(one[name], fisher[name])


def test_labels_per_example_settings_and_cache_keys(tiny_bert, sentiment_csv):
    assert "labels_per_example" not in StatisticsSettings().to_dict()  # entries cached before the field keep their keys
    assert StatisticsSettings(labels="sampled", labels_per_example=4).to_dict()["labels_per_example"] == 4
    with pytest.raises(ValueError, match="needs labels='sampled'"):
        StatisticsSettings(labels_per_example=2)
    with pytest.raises(ValueError, match="positive"):
        StatisticsSettings(labels="sampled", labels_per_example=0)


def test_gradient_moments_average_the_drawn_labels_too(tiny_bert, sentiment_csv):

    settings = StatisticsSettings(num_batches=1, batch_size=4, labels="sampled")
    one = statistics_for(tiny_bert, sentiment_csv, ("activations", "gradients"), settings, use_cache=False)
    many = statistics_for(
        tiny_bert, sentiment_csv, ("activations", "gradients"), settings.with_(labels_per_example=8), use_cache=False
    )
    name = "bert.encoder.layer.0.output.dense"
    torch.testing.assert_close(many[name]["input_moment"], one[name]["input_moment"])  # one forward pass either way
    G1, G8 = one[name]["grad_moment"], many[name]["grad_moment"]
    assert torch.isfinite(G8).all() and not torch.equal(G1, G8)
    assert 0.2 < float(G8.trace() / G1.trace()) < 5  # a mean over draws, not a sum


def test_a_causal_lms_backward_passes_are_split_without_changing_its_fisher(tiny_llama, text_task, monkeypatch):
    """backward_parts bounds a causal LM's autograd graph: one example per backward pass gives the Fisher of
    whole-batch passes (the per-example gradients are the same)."""
    from lowrank.statistics import passes

    settings = StatisticsSettings(num_batches=2, batch_size=4, max_length=16)
    monkeypatch.setattr(passes, "BACKWARD_TOKENS", 10**6)
    whole = select(statistics_for(tiny_llama, text_task, ("fisher",), settings, use_cache=False), "fisher")
    monkeypatch.setattr(passes, "BACKWARD_TOKENS", 16)
    batch = next(iter(batches(load_task(text_task), tiny_llama.tokenizer, "train", 4, 16)))
    assert [len(part["input_ids"]) for part in passes.backward_parts(tiny_llama, batch)] == [1, 1, 1, 1]
    split = select(statistics_for(tiny_llama, text_task, ("fisher",), settings, use_cache=False), "fisher")
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-10)
