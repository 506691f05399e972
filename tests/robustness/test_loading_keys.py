"""Weights that do not fill the model are an error naming the tensors, never random values measured as a model.

Regression: a weights file missing one encoder weight, or a fine-tuned classifier whose head was missing, loaded
with randomly initialised tensors and reported an accuracy. Only a base model given a new classification head for
a task may lack tensors, its head's, and that case stays labelled "untrained head".
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lowrank.cli.main import main
from lowrank.data import load_task
from lowrank.models import ModelLoadError, load_model, model_kind
from lowrank.models.labels import head_untrained

QUERY = "bert.encoder.layer.0.attention.self.query.weight"
HEAD = "classifier.weight"


def edited(source: Path, folder: Path, drop=(), add=None, reshape=()) -> Path:
    """A copy of the checkpoint ``source`` without the tensors ``drop``, with ``add`` and with ``reshape``
    tensors one row short."""
    shutil.copytree(source, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    for key in drop:
        del tensors[key]
    for key in reshape:
        tensors[key] = tensors[key][:-1].clone()
    tensors.update(add or {})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def evaluate(capsys, folder: Path, task: Path) -> tuple[int, str, str]:
    code = main(["evaluate", "--model", str(folder), "--task", str(task), "--limit", "1"])
    out, err = capsys.readouterr()
    return code, out, err


def assert_names(code: int, err: str, *tensors: str) -> None:
    """Exit 2 and one ``error: ...`` line naming ``tensors``, the last on stderr (progress bars may come before it)."""
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert "Traceback" not in err and all(t in lines[-1] for t in tensors), err


def test_a_missing_encoder_weight_is_an_error_naming_it(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    folder = edited(tiny_bert_dir, tmp_path / "m", drop=[QUERY])
    assert_names(*evaluate(capsys, folder, sentiment_csv)[::2], QUERY, "missing")


def test_a_fine_tuned_classifier_without_its_head_is_an_error_naming_it(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    folder = edited(tiny_bert_dir, tmp_path / "m", drop=[HEAD])
    assert_names(*evaluate(capsys, folder, sentiment_csv)[::2], HEAD, "missing")


def test_an_unexpected_tensor_is_an_error_naming_it(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    extra = "bert.encoder.layer.0.extra.weight"
    folder = edited(tiny_bert_dir, tmp_path / "m", add={extra: torch.zeros(4)})
    assert_names(*evaluate(capsys, folder, sentiment_csv)[::2], extra, "unexpected")


def test_a_tensor_of_another_shape_is_an_error_naming_it(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    folder = edited(tiny_bert_dir, tmp_path / "m", reshape=[QUERY])
    assert_names(*evaluate(capsys, folder, sentiment_csv)[::2], QUERY, "shape")


def test_a_base_model_gets_a_labelled_untrained_head(tiny_encoder_dir, sentiment_csv):
    loaded = load_model(str(tiny_encoder_dir), task=str(sentiment_csv))
    assert loaded.kind == "classifier" and type(loaded.model).__name__ == "BertForSequenceClassification"
    assert head_untrained(model_kind(load_model(str(tiny_encoder_dir)).model.config), load_task(sentiment_csv).kind)


def test_a_base_model_missing_an_encoder_weight_is_still_an_error(tmp_path, tiny_encoder_dir, sentiment_csv):
    key = "encoder.layer.0.attention.self.query.weight"
    folder = edited(tiny_encoder_dir, tmp_path / "m", drop=[key])
    for task in (None, str(sentiment_csv)):
        with pytest.raises(ModelLoadError, match="missing.*" + key.replace(".", r"\.")):
            load_model(str(folder), task=task)


# ---------------------------------------------------------------- generated: any edit of a checkpoint


@pytest.fixture(scope="module")
def reference(tiny_bert_dir):
    return load_file(str(tiny_bert_dir / "model.safetensors"))


@settings(
    max_examples=12,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_edit_of_the_weights_is_refused_naming_a_tensor_or_loads_them_all(data, tiny_bert_dir, reference):
    keys = sorted(reference)
    drop = data.draw(st.lists(st.sampled_from(keys), max_size=2, unique=True), label="drop")
    reshape = data.draw(
        st.lists(st.sampled_from([k for k in keys if k not in drop and reference[k].shape[0] > 1]), max_size=1),
        label="reshape",
    )
    add = data.draw(
        st.lists(st.sampled_from(["extra.weight", "bert.encoder.extra.bias", "classifier.extra"]), max_size=1)
    )
    edits = [*drop, *reshape, *add]
    with tempfile.TemporaryDirectory() as base:
        folder = edited(tiny_bert_dir, Path(base) / "m", drop, {k: torch.ones(3) for k in add}, reshape)
        if not edits:
            state = load_model(str(folder)).model.state_dict()
            assert all(torch.equal(state[k], v) for k, v in reference.items())
            return
        with pytest.raises(ModelLoadError) as err:
            load_model(str(folder))
        message = str(err.value)
        assert "\n" not in message and any(k in message for k in edits), message
