"""Error-compensated forms in runs and sweeps: a sweep runs the form it names as lowrank.compress_in_memory does
(the block sweep, on the sweep's calibration sample), its row states the alpha that ran, and a model without a block
sweep is refused in one line before any work."""

from __future__ import annotations

import pytest
import torch

from lowrank import compress_in_memory, load_compressed, load_model, method_form
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import SweepSpec, run_sweep
from lowrank.methods.compensated import ALPHA, VALIDATE
from lowrank.needs import needs_for
from lowrank.sequential import check_runnable
from lowrank.statistics import StatisticsSettings

SETTINGS = {"num_batches": 2, "batch_size": 2, "max_length": 16}


def logits(loaded, vocab: int) -> torch.Tensor:
    ids = torch.arange(3, 3 + 12).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


def test_a_sweep_runs_a_compensated_form_as_compress_in_memory_does(tmp_path, tiny_llama_dir, text_task, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text_task.texts["train"] * 40), encoding="utf-8")
    store = RunStore(tmp_path / "runs.sqlite")

    def sweep(options: dict, save: bool = False) -> dict:
        spec = SweepSpec(
            str(tiny_llama_dir),
            str(corpus),
            ["kfac_svd_compensated"],
            [0.5],
            strategy="uniform",
            eval_limit=1,
            statistics=SETTINGS,
            save=save,
            options=options,
        )
        return run_sweep(spec, store, store.create_sweep(spec.to_dict(), runs_total=spec.runs_total))

    assert sweep({}, save=True) == {"done": 2, "failed": 0}
    (row,) = store.runs(method="kfac_svd_compensated", status="done").to_dict("records")
    assert row["options"] == {"alpha": ALPHA, "validate": VALIDATE}  # the defaults that ran, stated
    loaded = load_model(str(tiny_llama_dir))
    direct = compress_in_memory(
        loaded, row["ranks"], "kfac_svd_compensated", str(corpus), StatisticsSettings(**SETTINGS)
    )
    saved = load_compressed(row["output_dir"])
    vocab = loaded.model.config.vocab_size
    assert (logits(saved, vocab) - logits(direct, vocab)).abs().max() < 1e-5
    assert saved.model.lowrank_info.sequential["statistics"].endswith("forward sweep (compensated inputs)")

    sweep({})  # the same key: found in the store, not run again (a saving sweep always runs)
    assert len(store.runs(method="kfac_svd_compensated")) == 1
    sweep({"kfac_svd_compensated": {"alpha": 0.5}})  # another alpha: another run
    alphas = sorted(r["alpha"] for r in store.runs(method="kfac_svd_compensated")["options"])
    assert alphas == sorted([ALPHA, 0.5])


def test_compensated_forms_run_only_where_a_block_sweep_does(tiny_encoder_dir, tiny_bert, tiny_llama):
    encoder = load_model(str(tiny_encoder_dir))  # a BERT without a classification head: no block layout
    with pytest.raises(ValueError, match="a causal LM of type .* or a classifier of type") as err:
        check_runnable(["svd", "kfac_svd_compensated"], encoder)
    assert "\n" not in str(err.value) and "kfac_svd_compensated" in str(err.value)
    for model in (tiny_llama, tiny_bert):
        check_runnable(["svd", "kfac_svd_compensated"], model)
    assert method_form(tiny_llama, "kfac_svd") == "kfac_svd_compensated"
    assert method_form(tiny_llama, "kfac_svd", compensate=False) == "kfac_svd"
    assert method_form(tiny_bert, "kfac_svd") == "kfac_svd"  # a classifier's default is the plain form
    assert method_form(tiny_bert, "kfac_svd", compensate=True) == "kfac_svd_compensated"
    assert method_form(encoder, "kfac_svd") == "kfac_svd"
    assert method_form(tiny_llama, "svd") == "svd"  # no compensated form
    # a sweep computes the dense model's statistics; the compensation moments come from the block sweep
    assert needs_for(["kfac_svd_compensated", "svd_llm_compensated"]) == ("gradients",)
