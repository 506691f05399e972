import shutil

import pytest
import torch

from lowrank import ModelLoadError, load_model
from lowrank.models.loading import estimate_parameters, model_kind


def test_tiny_models_load_with_kind(tiny_bert, tiny_llama):
    assert tiny_bert.kind == "classifier" and tiny_llama.kind == "causal-lm"
    assert tiny_bert.tokenizer.pad_token is not None


def test_encoder_gets_head_for_classification_task(tmp_path, tiny_bert_dir, sentiment_csv):
    from transformers import BertModel

    folder = tmp_path / "enc"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    shutil.copy(tiny_bert_dir / "tokenizer.json", folder)
    shutil.copy(tiny_bert_dir / "tokenizer_config.json", folder)
    assert load_model(str(folder)).kind == "encoder"
    with_head = load_model(str(folder), task=sentiment_csv)
    assert with_head.kind == "classifier" and with_head.model.config.id2label == {0: "negative", 1: "positive"}


def test_pickle_checkpoint_refused(tmp_path, tiny_bert_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", folder)
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(folder))


def test_bad_ids_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model("no-such-org/no-such-model")


def test_model_too_large_for_ram_is_refused(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr("lowrank.models.loading.available_ram_bytes", lambda: 1000)
    with pytest.raises(ModelLoadError, match="RAM"):
        load_model(str(tiny_bert_dir))


def test_parameter_estimate_matches_real_count(tiny_llama, tiny_bert):
    assert estimate_parameters(tiny_llama.model.config) == tiny_llama.num_parameters()
    assert model_kind(tiny_bert.model.config) == "classifier"


def test_classifier_label_mismatch(tiny_bert_dir, tmp_path):
    path = tmp_path / "three.csv"
    path.write_text("text,label\na,x\nb,y\nc,z\n")
    with pytest.raises(ModelLoadError, match="labels"):
        load_model(str(tiny_bert_dir), task=path)
