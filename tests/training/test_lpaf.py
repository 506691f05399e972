import json

import pytest
import torch

from lowrank import LowRankLinear, compressible_linears, load_compressed, resolve_ranks, save_compressed
from lowrank.cli.main import main
from lowrank.ranks import fraction_rank
from lowrank.statistics import DEFAULT
from lowrank.training.finetune import TrainConfig
from lowrank.training.lpaf import (
    FINETUNE_CONFIG,
    LpafConfig,
    average_ranks,
    default_sparsity,
    factorize_pruned,
    kept_fraction,
    lpaf,
    rank_analysis,
    sparsity_importance,
)
from lowrank.training.mixed import MixedRankLinear
from lowrank.training.prune import PRUNE_CONFIG, apply_masks, compute_masks

FAST = TrainConfig(epochs=1.0, lr=1e-3, batch_size=8, max_length=16, max_steps=6)


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


def magnitude_prune(loaded, sparsity):
    linears = compressible_linears(loaded.model)
    masks = compute_masks({n: m.weight.detach().abs() for n, m in linears.items()}, sparsity, "layer")
    apply_masks(loaded.model, masks)
    return masks


def test_rank_analysis_sees_zeroed_rows(tiny_bert):
    name = "bert.encoder.layer.0.attention.self.query"
    dense = rank_analysis(tiny_bert)
    assert len(dense) == 12 and set(dense["name"]) == set(compressible_linears(tiny_bert.model))
    row = dense.set_index("name").loc[name]
    assert row["numerical_rank"] == 64 and row["sparsity"] == 0.0 and row["rel_numerical_rank"] == 1.0
    with torch.no_grad():
        tiny_bert.model.get_submodule(name).weight[20:] = 0  # 44 zero rows: rank <= 20
    row = rank_analysis(tiny_bert).set_index("name").loc[name]
    assert row["numerical_rank"] == 20 and row["rank99"] <= 20 and row["sparsity"] == pytest.approx(44 / 64)
    summary = average_ranks(rank_analysis(tiny_bert, tol=0.5))
    assert {"numerical_rank", "effective_rank", "rank90", "rank95", "rank99", "rel_rank90", "sparsity"} <= set(summary)
    assert summary["numerical_rank"] < average_ranks(dense)["numerical_rank"]  # a looser tolerance counts fewer


def test_default_sparsity_matches_the_parameter_budget(tiny_bert):
    plan = resolve_ranks(tiny_bert.model, 0.5)
    fraction = kept_fraction(tiny_bert, plan)
    assert 0.45 < fraction <= 0.5
    assert default_sparsity(tiny_bert, 0.5) == pytest.approx(1 - fraction)
    name = "bert.encoder.layer.0.intermediate.dense"  # 256 x 64
    assert kept_fraction(tiny_bert, {name: 10}) == pytest.approx(10 * 320 / (256 * 64))
    with pytest.raises(ValueError, match="no layer"):
        default_sparsity(tiny_bert, 1.0)


def test_sparsity_importance_is_zero_exactly_at_pruned_entries():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(8, 10, generator=g)}
    masks = compute_masks(scores, 0.6, "layer")
    plain = sparsity_importance(masks)["a"]
    assert torch.equal(plain, masks["a"].float())
    weighted = sparsity_importance(masks, scores)["a"]
    assert (weighted[~masks["a"]] == 0).all()
    kept = weighted[masks["a"]]
    assert kept.min() >= 1.0 and kept.max() < 2.0
    order = scores["a"][masks["a"]].argsort()
    assert (kept[order].diff() > 0).all()  # increasing with the score


def test_sparsity_aware_error_on_kept_entries_is_not_worse_than_svd(tiny_bert):
    pytest.importorskip("lowrank.methods.sparsity_aware")
    masks = magnitude_prune(tiny_bert, 0.7)
    plain = factorize_pruned(tiny_bert, masks, 0.3, "svd")
    aware = factorize_pruned(tiny_bert, masks, 0.3, "sparsity_aware")
    assert aware.model.lowrank_info.method == "sparsity_aware"
    dense = compressible_linears(tiny_bert.model)
    for name in plain.model.lowrank_info.ranks:
        W, M = dense[name].weight.detach(), masks[name].float()
        errors = [float((M * (W - m.model.get_submodule(name).weight.detach()) ** 2).sum()) for m in (plain, aware)]
        assert errors[1] <= errors[0] * (1 + 1e-6) + 1e-9, name


def test_factorize_pruned_plain_svd_needs_no_importance(tiny_bert):
    masks = magnitude_prune(tiny_bert, 0.5)
    small = factorize_pruned(tiny_bert, masks, 0.5, "svd")
    assert small.model.lowrank_info.method == "svd" and len(small.model.lowrank_info.ranks) == 12
    name = "bert.encoder.layer.1.output.dense"
    W = compressible_linears(tiny_bert.model)[name].weight.detach()
    s = torch.linalg.svdvals(W)
    r = fraction_rank(*W.shape, 0.5)
    error = float(((W - small.model.get_submodule(name).weight.detach()) ** 2).sum())
    assert error == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-4)  # Eckart-Young on the pruned weight


def test_fisher_factorization_of_pruned_weights_beats_svd_on_the_fisher_error(tiny_bert):
    pytest.importorskip("lowrank.methods.tfwsvd")
    masks = magnitude_prune(tiny_bert, 0.6)
    dense = compressible_linears(tiny_bert.model)
    g = torch.Generator().manual_seed(0)
    fisher = {n: torch.rand(m.weight.shape, generator=g) ** 4 + 1e-3 for n, m in dense.items()}  # heavy-tailed
    plain = factorize_pruned(tiny_bert, masks, 0.3, "svd")
    weighted = factorize_pruned(tiny_bert, masks, 0.3, "tfwsvd", importance=fisher)
    assert weighted.model.lowrank_info.method == "tfwsvd"
    for name in plain.model.lowrank_info.ranks:
        W, F = dense[name].weight.detach(), fisher[name]  # W is the pruned weight: the zeros are targets too
        errors = [float((F * (W - m.model.get_submodule(name).weight.detach()) ** 2).sum()) for m in (plain, weighted)]
        assert errors[1] < errors[0], name


def test_factorize_pruned_rejects_bad_arguments(tiny_bert):
    masks = magnitude_prune(tiny_bert, 0.5)
    with pytest.raises(ValueError, match="factorization must be one of"):
        factorize_pruned(tiny_bert, masks, 0.5, "qr")
    with pytest.raises(ValueError, match="Fisher of the pruned model"):
        factorize_pruned(tiny_bert, masks, 0.5, "fwsvd")
    with pytest.raises(ValueError, match="score weighting"):
        factorize_pruned(tiny_bert, masks, 0.5, "svd", scores={n: m.float() for n, m in masks.items()})


def test_lpaf_config_defaults_and_validation():
    config = LpafConfig()
    assert config.sparsity is None and config.ranks == 0.5 and config.factorization == "sparsity_aware"
    assert config.prune_config == PRUNE_CONFIG and config.finetune_config == FINETUNE_CONFIG
    assert config.prune_config is not PRUNE_CONFIG  # a copy: mutating it leaves the module default alone
    assert config.statistics == DEFAULT and config.eval_limit is None and config.options == {}
    assert config.with_(p0=0.2).p0 == 0.2 and config.p0 == 0.5
    options = {"iterations": 3}
    copied = LpafConfig(options=options)
    options["iterations"] = 4
    assert copied.options == {"iterations": 3}
    for bad, match in (
        ({"factorization": "qr"}, "factorization must be one of"),
        ({"score_weighting": True, "factorization": "svd"}, "score weighting applies"),
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"prune_method": "random"}, "prune_method"),
        ({"scope": "row"}, "scope"),
        ({"score_update": "sgd"}, "score_update"),
        ({"schedule": "step"}, "schedule"),
        ({"p0": 1.5}, "p0"),
        ({"eval_limit": 0}, "eval_limit"),
    ):
        with pytest.raises(ValueError, match=match):
            LpafConfig(**bad)
    with pytest.raises(ValueError, match="positive integer"):
        config.with_(statistics=DEFAULT.with_(num_batches=0))
    with pytest.raises(TypeError, match="StatisticsSettings"):
        LpafConfig(statistics=32)
    with pytest.raises(TypeError, match="TrainConfig"):
        LpafConfig(finetune_config={"epochs": 1})


def test_lpaf_pipeline_end_to_end(tiny_bert, sentiment_csv, tmp_path):
    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    calls = []
    config = LpafConfig(
        sparsity=0.6, ranks=0.3, prune_config=FAST, finetune_config=FAST, factorization="svd", mixed_rank=True, p0=0.5
    )
    small = lpaf(tiny_bert, sentiment_csv, config, progress=lambda d, t, m: calls.append((d, t, m)))
    assert all(torch.equal(before[k], v) for k, v in tiny_bert.model.state_dict().items())  # input untouched
    modules = list(small.model.modules())
    assert not any(isinstance(m, MixedRankLinear) for m in modules)
    assert sum(isinstance(m, LowRankLinear) for m in modules) == 12
    options = small.model.lowrank_info.options
    assert options["pipeline"] == "lpaf" and options["mixed_rank"] and options["factorization"] == "svd"
    assert options["prune_method"] == "movement" and options["score_update"] == "raw"
    assert options["sparsity"] == pytest.approx(0.6, abs=1e-3) and 0.0 <= options["validation_accuracy"] <= 1.0
    assert {"seconds_prune", "seconds_factorize", "seconds_finetune"} <= set(options)
    done = [d for d, t, _ in calls]
    assert all(t == 1000 for _, t, _ in calls) and done == sorted(done) and done[-1] == 1000
    assert any("fine-tuning" in m for *_, m in calls) and any("svd" in m for *_, m in calls)
    save_compressed(small, tmp_path / "lpaf")
    again = load_compressed(tmp_path / "lpaf")
    assert (logits(again) - logits(small)).abs().max().item() <= 1e-5
    assert again.model.lowrank_info.options["pipeline"] == "lpaf"


def test_lpaf_with_given_masks_skips_pruning(tiny_bert, sentiment_csv):
    masks = magnitude_prune(tiny_bert, 0.5)
    small = lpaf(
        tiny_bert,
        sentiment_csv,
        LpafConfig(ranks=0.5, finetune_config=FAST, factorization="svd", mixed_rank=False),
        masks=masks,
    )
    options = small.model.lowrank_info.options
    assert "seconds_prune" not in options and options["prune_scope"] == "given" and not options["mixed_rank"]
    assert options["sparsity"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="scores"):
        lpaf(tiny_bert, sentiment_csv, LpafConfig(ranks=0.5, finetune_config=FAST, score_weighting=True), masks=masks)
    with pytest.raises(ValueError, match="score weighting applies"):
        LpafConfig(ranks=0.5, finetune_config=FAST, score_weighting=True, factorization="tfwsvd")


def test_lpaf_with_sparsity_aware_factorization(tiny_bert, sentiment_csv):
    pytest.importorskip("lowrank.methods.sparsity_aware")
    small = lpaf(
        tiny_bert,
        sentiment_csv,
        LpafConfig(
            sparsity=0.5,
            ranks=0.5,
            prune_config=FAST,
            finetune_config=FAST,
            prune_method="magnitude",
            score_weighting=True,
        ),
    )
    info = small.model.lowrank_info
    assert (
        info.method == "sparsity_aware"
        and info.options["factorization"] == "sparsity_aware"
        and info.options["score_weighting"]
    )
    assert info.options["prune_method"] == "magnitude" and info.options["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_cli_lpaf_on_a_pruned_folder_and_ranks(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    pruned, out = tmp_path / "pruned", tmp_path / "lpaf"
    common = ["--task", str(sentiment_csv), "--batch-size", "8", "--max-length", "16", "--lr", "1e-3"]
    assert (
        main(
            [
                "prune",
                "--model",
                str(tiny_bert_dir),
                "--sparsity",
                "0.6",
                "--max-steps",
                "4",
                "--out",
                str(pruned),
                "--json",
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(
        [
            "lpaf",
            "--model",
            str(pruned),
            "--keep",
            "0.4",
            "--max-steps",
            "4",
            "--factorization",
            "fwsvd",
            "--fisher-batches",
            "2",
            "--anneal",
            "cosine",
            "--out",
            str(out),
            "--json",
            *common,
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(stdout)
    assert record["pipeline"] == "lpaf" and record["anneal"] == "cosine" and record["layers"] == 12
    assert record["method"] == "fwsvd" and record["factorization"] == "fwsvd"
    assert record["sparsity"] == pytest.approx(0.6, abs=1e-3) and (out / "lowrank.json").exists()
    code = main(["lpaf", "--model", str(pruned), "--sparsity", "0.5", *common])
    assert code == 2 and "already pruned" in capsys.readouterr().err
    code = main(["ranks", "--model", str(pruned), "--summary", "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["sparsity"] == pytest.approx(0.6, abs=1e-3) and 0 < summary["rel_rank90"] <= 1
    assert main(["ranks", "--model", str(tiny_bert_dir)]) == 0 and "numerical_rank" in capsys.readouterr().out
