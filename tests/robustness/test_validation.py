"""One regression test per example of classes 4 and 5 of the reliability issue: malformed models and stores end in
one ``error:`` line (never a traceback or a hang), and an input that means nothing, or two things, is refused."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lowrank.data import load_task
from lowrank.experiments.store import RunStore
from lowrank.validate import label_name, parse_json
from tests.conftest import sentiment_frame
from tests.robustness.cli_errors import assert_clear_error, run

QUERY = "bert.encoder.layer.0.attention.self.query.weight"
LAYER = "bert.encoder.layer.0.intermediate.dense"


def edited_config(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


# ---------------------------------------------------------------- class 4: malformed models and stores


def test_a_weight_of_the_wrong_shape_is_a_clear_error(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "shape")
    tensors = load_file(folder / "model.safetensors")
    tensors[QUERY] = tensors[QUERY][:32].contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run(capsys, "evaluate", "--model", folder, "--task", sentiment_csv, "--limit", "1")
    assert_clear_error(code, err, QUERY, "another shape")  # names the tensor and both shapes


def test_a_negative_hidden_size_is_a_clear_error(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    folder = edited_config(tiny_bert_dir, tmp_path / "negative", hidden_size=-64)
    code, _, err = run(capsys, "evaluate", "--model", folder, "--task", sentiment_csv, "--limit", "1")
    assert_clear_error(code, err, "hidden_size", "-64")


def test_a_huge_layer_count_is_refused_at_once(capsys, tmp_path, tiny_bert_dir):
    folder = edited_config(tiny_bert_dir, tmp_path / "deep", num_hidden_layers=100_000)
    start = time.perf_counter()
    code, _, err = run(capsys, "spectra", "--model", folder)
    assert_clear_error(code, err, "num_hidden_layers", "100000")
    assert time.perf_counter() - start < 10  # the old memory check built 100,000 layers first


def test_a_deeply_nested_plan_is_a_clear_error(capsys, tmp_path, tiny_bert_dir):
    plan = tmp_path / "deep.json"
    plan.write_text('{"ranks": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001)
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--plan", plan)
    assert_clear_error(code, err, str(plan), "nested")


@pytest.mark.parametrize("where", ["--store", "cache"])
def test_a_run_store_that_is_a_folder_is_a_clear_error(capsys, tmp_path, monkeypatch, where):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    folder = tmp_path / ("mine" if where == "--store" else "runs.sqlite")
    folder.mkdir()
    code, _, err = run(capsys, "report", *(["--store", folder] if where == "--store" else []))
    assert_clear_error(code, err, str(folder), "folder")
    assert folder.is_dir() and not any(folder.iterdir())


# ---------------------------------------------------------------- class 5: inputs that mean nothing, or two things


def test_labels_spelt_1_and_1_0_are_one_class(tmp_path):
    frame = sentiment_frame()
    frame["label"] = ["1", "1.0", " 1 ", "+1", "0", "0.0", "00", " 0"] * (len(frame) // 8)
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    task = load_task(str(path))
    assert task.label_names == ["0", "1"]
    assert [label_name(v) for v in ("1", "1.0", "１", "1e0")] == ["1"] * 4


def test_a_plan_with_a_layer_twice_is_a_clear_error(capsys, tmp_path, tiny_bert_dir):
    plan = tmp_path / "twice.json"
    plan.write_text(f'{{"ranks": {{"{LAYER}": 4, "{LAYER}": 8}}}}')
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--plan", plan)
    assert_clear_error(code, err, LAYER, "twice")
    with pytest.raises(ValueError, match="twice"):
        parse_json('{"a": 1, "a": 1}', "x")


@pytest.mark.parametrize("flag", ["--out", "--plan"])
def test_an_empty_path_is_a_clear_error(capsys, tiny_bert_dir, flag):
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, flag, "")
    assert_clear_error(code, err, flag)


def test_sequential_inputs_without_sequential_is_a_clear_error(capsys, tiny_llama_dir):
    code, _, err = run(capsys, "compress", "--model", tiny_llama_dir, "--sequential-inputs", "dense")
    assert_clear_error(code, err, "--sequential")


@pytest.mark.parametrize(
    "extra",
    [["--solver", "als", "--option", "solver=em"], ["--option", "solver=em", "--option", "solver=als"]],
    ids=["solver-and-option", "option-twice"],
)
def test_a_solver_given_twice_is_a_clear_error(capsys, tiny_bert_dir, extra):
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--method", "tfwsvd", *extra)
    assert_clear_error(code, err, "solver")


@pytest.mark.parametrize("option", ["alpha=NaN", "alpha=Infinity", "alpha=1e400"])
def test_a_non_finite_method_option_is_a_clear_error(capsys, tiny_bert_dir, option):
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--method", "asvd", "--option", option)
    assert_clear_error(code, err, "alpha")


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--epochs", "nan"],
        ["finetune", "--lr", "0"],
        ["finetune", "--lr", "-1e-5"],
        ["ranks", "--tol", "nan"],
        ["ranks", "--tol", "-1"],
        ["prune", "--sparsity", "nan"],
        ["lpaf", "--p0", "inf"],
        ["compress", "--keep", "nan"],
        ["allocate", "--budget", "0.5", "--align", "0"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_meaningless_numbers_are_refused_before_any_work(capsys, tiny_bert_dir, sentiment_csv, argv):
    flag = argv[-2]
    code, _, err = run(capsys, *argv, "--model", tiny_bert_dir, "--task", sentiment_csv)
    assert_clear_error(code, err, flag)


def test_a_store_over_a_users_text_file_is_refused_and_the_file_kept(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, _, err = run(capsys, "report", "--store", notes)
    assert_clear_error(code, err, str(notes), "not a run store")
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="not a run store"):
        RunStore(notes)


def test_a_store_is_created_where_nothing_exists_and_reopened(tmp_path):
    path = tmp_path / "mine.db"
    RunStore(path).start_run(model="m")
    assert len(RunStore(path).runs()) == 1
    other = tmp_path / "runs"  # no suffix: a database by its header
    RunStore(other).start_run(model="m")
    assert len(RunStore(other).runs()) == 1
