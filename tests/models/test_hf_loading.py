"""A compressed folder loads in plain transformers after ``import lowrank`` (the ``lowrank`` quantization method), and
carries a model card that says what was done and measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from lowrank import (
    HealConfig,
    LowRankLinear,
    ModelLoadError,
    compress,
    evaluate,
    heal,
    load_compressed,
    save_compressed,
)
from lowrank.card import CARD_FILE, update_card
from lowrank.compress import set_module
from lowrank.files.outputs import OutputError
from tests.conftest import POSITIVE
from tests.robustness.cli_errors import assert_clear_error, run

ROOT = Path(__file__).resolve().parents[2]
AUTO = {"tiny_llama": AutoModelForCausalLM, "tiny_bert": AutoModelForSequenceClassification}
# A fresh interpreter: nothing of lowrank but `import lowrank`, then transformers' own from_pretrained.
FRESH = """
import json, sys, torch, transformers
import lowrank
model = getattr(transformers, sys.argv[2]).from_pretrained(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[3]))
with torch.no_grad():
    out = model(input_ids=ids).logits
layers = sum(isinstance(m, lowrank.LowRankLinear) for m in model.modules())
torch.save({"logits": out, "params": sum(p.numel() for p in model.parameters()), "layers": layers}, sys.argv[4])
"""


def ids_of(loaded) -> list[list[int]]:
    return loaded.tokenizer(POSITIVE[:2], padding="max_length", max_length=8, truncation=True)["input_ids"]


def logits_of(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_from_pretrained_in_a_fresh_process_is_load_compressed(request, tmp_path, fixture):
    loaded = request.getfixturevalue(fixture)
    small = compress(loaded, 0.3)
    folder = save_compressed(small, tmp_path / "small")
    reference = load_compressed(folder)
    ids = ids_of(loaded)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH, str(folder), AUTO[fixture].__name__, json.dumps(ids), str(tmp_path / "o.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "o.pt")
    assert (out["logits"] - logits_of(reference.model, ids)).abs().max().item() <= 1e-6
    assert out["params"] == params(reference.model) == params(small.model) < params(loaded.model)
    assert out["layers"] == len(small.model.lowrank_info.ranks) > 0


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_save_pretrained_round_trip(request, tmp_path, fixture):
    loaded = request.getfixturevalue(fixture)
    folder = save_compressed(compress(loaded, 0.3), tmp_path / "small")
    model = AUTO[fixture].from_pretrained(folder)
    model.save_pretrained(tmp_path / "again")
    ids = ids_of(loaded)
    again = AUTO[fixture].from_pretrained(tmp_path / "again", device_map="cpu")
    assert (logits_of(again, ids) - logits_of(model, ids)).abs().max().item() == 0
    assert params(again) == params(model)
    # no lowrank.json there: load_compressed reads the ranks from config.json and keeps its checks
    back = load_compressed(tmp_path / "again")
    assert (logits_of(back.model, ids) - logits_of(model, ids)).abs().max().item() == 0
    assert back.model.lowrank_info.ranks == model.lowrank_info.ranks
    # and lowrank's own save of the model transformers loaded writes a full folder again, card included
    third = save_compressed(model, tmp_path / "third", tokenizer=loaded.tokenizer)
    assert (third / CARD_FILE).exists() and (
        logits_of(load_compressed(third).model, ids) == logits_of(model, ids)
    ).all()


def test_a_model_compress_returns_saves_loadable_with_save_pretrained(tmp_path, tiny_llama):
    small = compress(tiny_llama, 0.3)
    small.model.save_pretrained(tmp_path / "plain-save")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain-save")
    ids = ids_of(tiny_llama)
    assert (logits_of(again, ids) - logits_of(small.model, ids)).abs().max().item() <= 1e-6


def test_save_pretrained_writes_the_ranks_of_the_layers_as_they_are_then(tmp_path, tiny_llama):
    """A layer merged back to dense after loading is saved dense: the config lists the low-rank layers left."""
    small = compress(tiny_llama, 0.3)
    ids = ids_of(tiny_llama)
    for source in (small.model, AutoModelForCausalLM.from_pretrained(save_compressed(small, tmp_path / "small"))):
        name = next(iter(source.lowrank_info.ranks))
        factored = source.get_submodule(name)
        dense = torch.nn.Linear(factored.in_features, factored.out_features, bias=False)
        dense.weight.data = factored.weight.detach().clone()
        set_module(source, name, dense)
        source.save_pretrained(tmp_path / "merged")
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        assert name not in again.config.quantization_config.ranks and type(again.get_submodule(name)) is type(dense)
        assert (logits_of(again, ids) - logits_of(source, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
def test_dtype_gives_factors_of_that_dtype(tmp_path, tiny_llama, keyword):
    folder = save_compressed(compress(tiny_llama, 0.3), tmp_path / "small")
    model = AutoModelForCausalLM.from_pretrained(folder, **{keyword: torch.bfloat16})
    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert layers and {m.U.dtype for m in layers} == {m.V.dtype for m in layers} == {torch.bfloat16}
    assert logits_of(model, ids_of(tiny_llama)).dtype == torch.bfloat16


def test_a_base_model_class_loads_the_factors_of_a_model_with_a_head(tmp_path, tiny_bert):
    small = compress(tiny_bert, 0.3)
    folder = save_compressed(small, tmp_path / "small")
    encoder = AutoModel.from_pretrained(folder)  # BertModel: layer names without the "bert." prefix
    layers = {n for n, m in encoder.named_modules() if isinstance(m, LowRankLinear)}
    assert layers == {n.removeprefix("bert.") for n in small.model.lowrank_info.ranks}
    batch = torch.tensor(ids_of(tiny_bert))
    with torch.no_grad():
        want = small.model.bert(input_ids=batch).last_hidden_state
        assert (encoder(input_ids=batch).last_hidden_state - want).abs().max().item() <= 1e-5


def test_a_folder_without_lowrank_config_loads_as_a_plain_model(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()


def test_gpt2_projections_stay_linear_across_the_load(tmp_path, tiny_gpt2_dir):
    from lowrank import load_model

    loaded = load_model(str(tiny_gpt2_dir))
    small = compress(loaded, {"transformer.h.0.attn.c_attn": 8})  # the other Conv1D layers are saved dense
    folder = save_compressed(small, tmp_path / "small")
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = ids_of(loaded)
    assert (logits_of(model, ids) - logits_of(small.model, ids)).abs().max().item() <= 1e-5


def _tamper_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))


def test_ranks_that_do_not_match_the_tensors_are_a_one_line_error(tmp_path, tiny_llama):
    folder = save_compressed(compress(tiny_llama, 0.3), tmp_path / "small")
    first = next(iter(json.loads((folder / "lowrank.json").read_text())["ranks"]))

    def bump(qc):
        qc["ranks"][first] += 1

    _tamper_config(folder, bump)
    with pytest.raises(ModelLoadError, match=f"size mismatch for {first}") as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "\n" not in str(err.value) and "config.json's quantization_config" in str(err.value)
    with pytest.raises(ModelLoadError, match="differ from lowrank.json") as err:  # lowrank.json still fits
        load_compressed(folder)
    assert "\n" not in str(err.value)

    _tamper_config(folder, lambda qc: qc["ranks"].pop(first))
    with pytest.raises(ModelLoadError, match="weights do not match") as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "\n" not in str(err.value) and f"{first}.U" in str(err.value)

    _tamper_config(folder, lambda qc: qc.update(ranks={first: "12"}))
    with pytest.raises(ModelLoadError, match="an integer") as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "\n" not in str(err.value)


def test_factors_that_disagree_with_config_json_alone_are_refused_by_load_compressed(capsys, tmp_path, tiny_bert):
    """A folder written by save_pretrained has no lowrank.json: config.json's ranks are checked the same way."""
    folder = save_compressed(compress(tiny_bert, 0.3), tmp_path / "small")
    AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(tmp_path / "again")
    tensors = load_file(tmp_path / "again" / "model.safetensors")
    key = next(k for k in tensors if k.endswith(".U"))
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, tmp_path / "again" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="size mismatch") as err:
        load_compressed(tmp_path / "again")
    assert "\n" not in str(err.value) and "config.json" in str(err.value)
    code, _, err = run(capsys, "spectra", "--model", tmp_path / "again")
    assert_clear_error(code, err, "size mismatch", key.removesuffix(".U"))


def test_the_model_card_names_method_budget_and_measured_quality(tmp_path, tiny_bert, sentiment_csv):
    small = compress(tiny_bert, 0.3)
    measured = evaluate(small, str(sentiment_csv), latency=False)
    dense = evaluate(tiny_bert, str(sentiment_csv), latency=False)
    folder = save_compressed(small, tmp_path / "small", evaluation=measured, reference=dense)
    card = (folder / CARD_FILE).read_text()
    head, _, body = card.partition("\n---\n")
    assert head.startswith("---\n") and "library_name: lowrank-studio" in head and "- lowrank" in head
    assert "- svd" in head and "base_model" not in head  # a local folder is no hub id
    assert "method: `svd`" in body
    kept = measured.params_linear / dense.params_linear
    assert f"kept fraction of the compressible Linear parameters: {kept:.3f}" in body
    assert f"| accuracy | {measured.value:.4g} | {dense.value:.4g} |" in body
    assert "latency, batch 1 (ms) | not measured | not measured" in body
    assert "import lowrank, transformers" in body and "AutoModelForSequenceClassification.from_pretrained(" in body


def test_the_card_of_a_healed_model_names_its_calibration_sample_and_healing(tmp_path, tiny_llama, text_task):
    small = compress(tiny_llama, 0.3)
    small.model.lowrank_info.calibration = {"task": "lee", "split": "train", "examples": 32, "tokens": 4096, "seed": 0}
    healed = heal(
        small, tiny_llama, text_task, HealConfig(steps=2, eval_every=1, batch_size=1, max_length=32, heldout_batches=1)
    )
    record = healed.model.lowrank_info.healing
    card = (save_compressed(healed, tmp_path / "healed") / CARD_FILE).read_text()
    assert "calibration data: 4,096 tokens (32 examples) of the train split of `lee`, seed 0" in card
    assert f"healing (training toward the dense model on calibration text only): {record['level']}" in card
    assert f"held-out KL to dense {record['heldout_before']:.4g} -> {record['heldout_after']:.4g}" in card
    unhealed = (save_compressed(compress(tiny_llama, 0.3), tmp_path / "plain") / CARD_FILE).read_text()
    assert "healing (training toward the dense model on calibration text only): none" in unhealed


def test_a_card_without_measurements_says_so(tmp_path, tiny_llama):
    folder = save_compressed(compress(tiny_llama, 0.3), tmp_path / "small")
    card = (folder / CARD_FILE).read_text()
    assert "not measured when this folder was written" in card and "AutoModelForCausalLM" in card


def test_compress_evaluate_writes_the_measured_quality_into_the_card(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    out = tmp_path / "small"
    argv = ["compress", "--model", tiny_bert_dir, "--keep", "0.3", "--out", out, "--task", sentiment_csv]
    code, stdout, err = run(capsys, *argv, "--evaluate", "--json")
    assert code == 0, err
    record = json.loads(stdout)
    assert f"| accuracy | {record['value']:.4g} | not measured |" in (out / CARD_FILE).read_text()
    code, _, err = run(capsys, *argv, "--force")  # the folder is lowrank's, its card too: replaced again
    assert code == 0, err


def test_a_card_lowrank_did_not_write_is_never_replaced(tmp_path, tiny_bert):
    folder = save_compressed(compress(tiny_bert, 0.3), tmp_path / "small")
    AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(tmp_path / "theirs")
    (tmp_path / "theirs" / CARD_FILE).write_text("my notes")
    with pytest.raises(OutputError, match="not written by lowrank"):
        update_card(tmp_path / "theirs")
    assert (tmp_path / "theirs" / CARD_FILE).read_text() == "my notes"
