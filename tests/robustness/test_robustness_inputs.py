"""Bad input ends in one clear message, never a traceback or a silently wrong number.

Labels checked against the model (and mapped by name), the recorded task as the default, one-line
``error: ...`` / exit 2 for broken files, folders, devices, limits and options, NaN weights refused at
load, a dashboard bound to localhost that does not reveal server paths, sweeps whose owner is gone,
bounded texts and uploads, "NA" texts kept.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import tomllib
import torch

from lowrank.compress import compress, load_compressed, save_compressed
from lowrank.data import load_task
from lowrank.evaluation import evaluate
from lowrank.experiments.store import RunStore
from lowrank.models import ModelLoadError, load_model
from lowrank.models.labels import check_labels, default_task
from tests.conftest import sentiment_frame
from tests.robustness.cli_errors import assert_clear_error, run

ROOT = Path(__file__).resolve().parents[2]
QUERY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_CACHE", str(cache))
    return cache


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture()
def fresh_rotten_csv(tmp_path) -> Path:
    frame = sentiment_frame()
    frame["label"] = frame["label"].map({"positive": "fresh", "negative": "rotten"})
    return write_csv(tmp_path / "fresh_rotten.csv", frame)


@pytest.fixture()
def three_class_csv(tmp_path) -> Path:
    frame = sentiment_frame()
    frame.loc[::3, "label"] = "neutral"
    return write_csv(tmp_path / "three.csv", frame)


def copy_model(source: Path, folder: Path, edit=None, config_edit=None) -> Path:
    """A copy of a saved model with its tensors (``edit(tensors)``) or its config.json edited."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    if edit is not None:
        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if config_edit is not None:
        config = json.loads((folder / "config.json").read_text())
        config_edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture()
def swapped_bert_dir(tmp_path, tiny_bert_dir) -> Path:
    """The tiny classifier with its two output rows swapped and named so: {0: positive, 1: negative}."""

    def swap(tensors):
        for key in ("classifier.weight", "classifier.bias"):
            tensors[key] = tensors[key].flip(0).contiguous()

    def rename(config):
        config["id2label"] = {"0": "positive", "1": "negative"}
        config["label2id"] = {"positive": 0, "negative": 1}

    return copy_model(tiny_bert_dir, tmp_path / "swapped", swap, rename)


# ---------------------------------------------------------------- 3. labels


def test_a_task_with_other_label_names_is_refused(capsys, tiny_bert_dir, fresh_rotten_csv):
    code, out, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", fresh_rotten_csv, "--json")
    assert_clear_error(code, err, "fresh", "negative")
    assert out == ""  # no accuracy of 0.000 (or 1.000) for labels the model never predicted


def test_a_task_with_more_labels_than_the_model_is_refused(capsys, tiny_bert_dir, three_class_csv):
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", three_class_csv)
    assert_clear_error(code, err, "classifies 2 labels", "has 3")


def test_labels_are_mapped_to_the_model_by_name_whatever_their_order(tiny_bert_dir, swapped_bert_dir, sentiment_csv):
    original, swapped = load_model(str(tiny_bert_dir)), load_model(str(swapped_bert_dir))
    task = load_task(sentiment_csv)  # negative = 0, positive = 1 (sorted)
    mapped = check_labels(swapped, task)
    assert mapped.label_names == ["positive", "negative"]
    names = [task.label_names[y] for y in task.labels["validation"]]
    assert [mapped.label_names[y] for y in mapped.labels["validation"]] == names
    a, b = evaluate(original, task, latency=False), evaluate(swapped, task, latency=False)
    assert b.value == a.value and b.loss == pytest.approx(a.loss, rel=1e-6)  # the same predictions, the same score


def test_loading_a_classifier_with_a_task_keeps_its_own_labels(swapped_bert_dir, sentiment_csv):
    loaded = load_model(str(swapped_bert_dir), task=sentiment_csv)
    assert loaded.model.config.id2label == {0: "positive", 1: "negative"}


def test_placeholder_label_names_are_checked_by_count_only(tmp_path, tiny_bert_dir, sentiment_csv):
    def placeholders(config):
        config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
        config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}

    plain = load_model(str(copy_model(tiny_bert_dir, tmp_path / "plain", config_edit=placeholders)))
    task = load_task(sentiment_csv)
    assert check_labels(plain, task) is task


def test_commands_default_to_the_task_the_model_records(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--limit", "1")
    assert_clear_error(code, err, f"--task is required: {tiny_bert_dir} records no task")
    code, _, err = run(capsys, "fisher", "--model", tiny_bert_dir)
    assert_clear_error(code, err, "--task is required")

    tuned = tmp_path / "tuned"
    code, _, err = run(
        capsys, "finetune", "--model", tiny_bert_dir, "--task", sentiment_csv, "--max-steps", "1", "--out", tuned
    )
    assert code == 0, err
    assert json.loads((tuned / "config.json").read_text())["lowrank_task"] == str(sentiment_csv.resolve())
    code, out, err = run(capsys, "evaluate", "--model", tuned, "--limit", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["task"] == "sentiment"
    small = tmp_path / "small"  # a compressed copy keeps the record
    code, _, err = run(capsys, "compress", "--model", tuned, "--keep", "0.5", "--out", small, "--evaluate", "--json")
    assert code == 0, err
    assert default_task(load_compressed(small)) == str(sentiment_csv.resolve())


def test_the_default_task_of_packaged_and_causal_models(tiny_llama, tiny_bert):
    from dataclasses import replace

    assert default_task(tiny_llama) == "lee"
    assert default_task(tiny_bert) is None
    assert default_task(replace(tiny_bert, name="minilm-rt")) == "rotten_tomatoes"


# ---------------------------------------------------------------- 5. one-line errors


def test_truncated_weights_are_a_clear_error(capsys, tmp_path, tiny_bert_dir):
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    code, _, err = run(capsys, "spectra", "--model", folder)
    assert_clear_error(code, err, str(weights), "truncated")


def test_a_folder_where_a_csv_belongs_is_a_clear_error(capsys, tmp_path, tiny_bert_dir):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", folder)
    assert_clear_error(code, err, str(folder), "folder")


def test_an_empty_validation_split_is_a_clear_error(capsys, tmp_path, tiny_bert_dir):
    few = write_csv(tmp_path / "few.csv", sentiment_frame().iloc[8:12])  # 4 rows: a 10% split rounds to nothing
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", few)
    assert_clear_error(code, err, "'validation'", "empty")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--limit", "0"], "--limit"),
        (["--device", "tpu9"], "tpu9"),
        (["--limit", "x"], "invalid int value"),
    ],
)
def test_bad_shared_options_are_clear_errors(capsys, tiny_bert_dir, sentiment_csv, argv, needle):
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", sentiment_csv, *argv)
    assert_clear_error(code, err, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys, tiny_bert_dir, sentiment_csv):
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--task", sentiment_csv, "--device", "cuda")
    assert_clear_error(code, err, "CUDA is not available")


def test_a_compressed_folder_whose_ranks_disagree_with_its_weights(tmp_path, tiny_bert):
    folder = save_compressed(compress(tiny_bert, 0.5), tmp_path / "small")
    meta = json.loads((folder / "lowrank.json").read_text())
    first = next(iter(meta["ranks"]))
    missing = dict(meta, ranks={k: v for k, v in meta["ranks"].items() if k != first})
    (folder / "lowrank.json").write_text(json.dumps(missing))
    with pytest.raises(ModelLoadError, match="do not match lowrank.json"):
        load_compressed(folder)
    (folder / "lowrank.json").write_text(
        json.dumps(dict(meta, ranks={**meta["ranks"], first: meta["ranks"][first] + 1}))
    )
    with pytest.raises(ModelLoadError, match="size mismatch"):
        load_compressed(folder)


@pytest.mark.parametrize(
    "command",
    [
        ["compress", "--method", "tfwsvd", "--option", "solvr=em"],  # a misspelt solver option
        ["compress", "--method", "tfwsvd", "--option", "max_iters=-1"],
        ["compress", "--method", "asvd", "--option", "alpha=abc"],  # an option of the wrong type
        ["risk", "--method", "svd"],  # risk compares SVD with a Fisher-weighted method
    ],
)
def test_bad_options_are_refused_before_any_statistics_pass(
    capsys, private_cache, tiny_bert_dir, sentiment_csv, command
):
    code, _, err = run(capsys, *command, "--model", tiny_bert_dir, "--task", sentiment_csv, "--fisher-batches", "1")
    assert_clear_error(code, err)
    assert not list(private_cache.glob("fisher/*")) and not list(private_cache.glob("moments/*"))  # no pass was paid


def test_the_dashboard_shows_every_error_the_command_line_reports():
    from dashboard import widgets
    from lowrank import errors

    assert set(errors.USER_ERRORS) <= set(widgets.USER_ERRORS)
    assert ModelLoadError in errors.USER_ERRORS and OSError in errors.USER_ERRORS
    assert (
        errors.describe(IsADirectoryError(21, "Is a directory", "/some/plan.json")) == "/some/plan.json: Is a directory"
    )


# ---------------------------------------------------------------- 6. non-finite weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(capsys, tmp_path, tiny_bert_dir, sentiment_csv, value):
    def poison(tensors):
        tensors[QUERY][0, 0] = value

    folder = copy_model(tiny_bert_dir, tmp_path / "poisoned", poison)
    with pytest.raises(ModelLoadError, match=QUERY.replace(".", r"\.")):
        load_model(str(folder))
    code, _, err = run(capsys, "evaluate", "--model", folder, "--task", sentiment_csv)
    assert_clear_error(code, err, QUERY, "NaN or infinite")
    code, _, err = run(capsys, "spectra", "--model", folder)
    assert_clear_error(code, err, QUERY)


def test_a_compressed_model_with_nan_factors_is_refused(tmp_path, tiny_bert):
    from safetensors.torch import load_file, save_file

    folder = save_compressed(compress(tiny_bert, 0.5), tmp_path / "small")
    tensors = load_file(folder / "model.safetensors")
    key = next(k for k in tensors if k.endswith(".U"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        load_compressed(folder)


# ---------------------------------------------------------------- 8. the dashboard's exposure


def test_the_dashboard_listens_on_localhost_unless_told_otherwise():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    makefile = (ROOT / "Makefile").read_text()
    assert "ADDRESS ?= 127.0.0.1" in makefile and "--server.address $(ADDRESS)" in makefile
    assert "make run ADDRESS=0.0.0.0" in (ROOT / "README.md").read_text()


def test_the_model_box_does_not_reveal_which_server_paths_exist(tmp_path, monkeypatch, tiny_bert_dir):
    from dashboard.inputs import model_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOWRANK_MODEL_ROOTS", raising=False)
    outside_existing, outside_missing = tiny_bert_dir, tiny_bert_dir.parent / "no-such-model"
    with pytest.raises(ValueError) as existing:
        model_source(str(outside_existing))
    with pytest.raises(ValueError) as missing:
        model_source(str(outside_missing))
    assert str(existing.value).replace(str(outside_existing), "X") == str(missing.value).replace(
        str(outside_missing), "X"
    )
    with pytest.raises(ValueError):
        model_source("../" * 12 + str(tiny_bert_dir).lstrip("/"))  # climbing out of the working directory
    assert model_source("minilm") == "minilm" and model_source("org/some-model") == "org/some-model"  # hub ids

    monkeypatch.setenv("LOWRANK_MODEL_ROOTS", str(tiny_bert_dir.parent))
    assert model_source(str(tiny_bert_dir)) == str(tiny_bert_dir.resolve())
    local = shutil.copytree(tiny_bert_dir, tmp_path / "models" / "mine")  # under the working directory
    assert model_source("models/mine") == str(local.resolve())


# ---------------------------------------------------------------- 9. sweeps whose owner is gone


def foreign_sweep(store: RunStore, tiny_bert_dir, sentiment_csv) -> tuple[int, int]:
    """A running sweep (and one running run of it) owned by a process of another host."""
    from lowrank.experiments.sweep import SweepSpec

    spec = SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.5])
    sweep_id = store.create_sweep(spec.to_dict(), runs_total=spec.runs_total)
    store.update_sweep(sweep_id, host="another-host", pid=4242, pid_started=1.0)
    run_id = store.start_run(sweep_id=sweep_id, method="svd", model=str(tiny_bert_dir))
    store.update_run(run_id, host="another-host", pid=4242, pid_started=1.0)
    return sweep_id, run_id


def later(monkeypatch, seconds: float) -> None:
    """The job lifecycle's clock (lowrank.experiments.jobs), ``seconds`` ahead (the store keeps the real one)."""
    from lowrank.experiments import jobs

    fake = types.SimpleNamespace(time=lambda: time.time() + seconds, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(jobs, "time", fake)


def test_a_sweep_whose_owner_stopped_reporting_ends_interrupted(tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv):
    from lowrank.experiments.sweep import STALE_S, cancel_sweep, running_sweeps

    store = RunStore(tmp_path / "runs.sqlite")
    sweep_id, run_id = foreign_sweep(store, tiny_bert_dir, sentiment_csv)
    assert list(running_sweeps(store)["id"]) == [sweep_id]  # its heartbeat is fresh: still running
    later(monkeypatch, STALE_S + 5)
    assert running_sweeps(store).empty
    sweep = store.get_sweep(sweep_id)
    assert sweep["status"] == "interrupted" and "another-host" in sweep["error"]
    assert store.get_run(run_id)["status"] == "interrupted"
    assert not cancel_sweep(store, sweep_id)


def test_a_live_sweep_of_another_host_can_be_cancelled(tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv):
    from lowrank.experiments import jobs, stop, sweep

    store = RunStore(tmp_path / "runs.sqlite")
    sweep_id, _ = foreign_sweep(store, tiny_bert_dir, sentiment_csv)
    assert sweep.cancel_sweep(store, sweep_id)  # alive elsewhere: a stop request in its row
    assert jobs.STOP_REQUEST in store.get_sweep(sweep_id)["error"]
    monkeypatch.setattr(stop, "_STOP", threading.Event())
    with jobs.Heartbeat(jobs.Job(store, "sweeps", sweep_id), interval=0.05):  # the owner's: it reads the request
        deadline = time.monotonic() + 10
        while not stop._STOP.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stop._STOP.is_set()
    later(monkeypatch, 4 * jobs.HEARTBEAT_S)  # an owner that never answers is gone after a few beats
    assert sweep.running_sweeps(store).empty and store.get_sweep(sweep_id)["status"] == "interrupted"


def test_a_repeated_or_resumed_sweep_skips_the_runs_already_stored(tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv):
    from lowrank.experiments import jobs, sweep

    store = RunStore(tmp_path / "runs.sqlite")
    spec = sweep.SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.5], eval_limit=1)
    first = store.create_sweep(spec.to_dict(), runs_total=spec.runs_total)
    sweep.run_sweep(spec, store, first)
    second = store.create_sweep(spec.to_dict(), runs_total=spec.runs_total)
    counts = sweep.run_sweep(spec, store, second)
    assert counts == {"done": 2, "failed": 0}
    assert len(store.runs(method="svd")) == 1  # not run again
    assert "already stored" in store.get_sweep(second)["message"]
    other = sweep.SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.3], eval_limit=1)  # another key: runs
    sweep.run_sweep(other, store, store.create_sweep(other.to_dict(), runs_total=other.runs_total))
    assert len(store.runs(method="svd")) == 2

    launched = []
    monkeypatch.setattr(jobs.Job, "launch", lambda job: launched.append(job.id))
    store.end_sweep(second, "interrupted", error="killed")
    assert sweep.resume_sweep(store, second) == second and launched == [second]
    row = store.get_sweep(second)
    assert row["status"] == "running" and row["error"] is None
    with pytest.raises(ValueError, match="still running"):
        sweep.resume_sweep(store, second)


# ---------------------------------------------------------------- 10. unbounded inputs


def test_huge_texts_are_clipped_before_tokenization(tokenizer):
    from lowrank.data.batches import CHARS_PER_TOKEN, encode

    seen = []

    def spy(texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return tokenizer(texts, *args, **kwargs)

    batch = encode(spy, ["word " * 200_000, "short"], max_length=32)
    assert max(seen) <= CHARS_PER_TOKEN * 32 and batch["input_ids"].shape == (2, 32)


def test_uploads_are_capped_and_expire(monkeypatch, private_cache):
    from dashboard import cache, inputs

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == inputs.MAX_UPLOAD_MB  # Streamlit's limit and ours agree
    monkeypatch.setattr(inputs, "MAX_UPLOAD_MB", 1)
    with pytest.raises(ValueError, match="upload limit of 1 MB"):
        cache.save_upload("big.csv", b"text,label\n" + b"x" * (2 * 2**20))
    assert not list(private_cache.glob("uploads/*"))
    old = private_cache / "uploads" / "0123456789ab"
    old.mkdir(parents=True)
    (old / "old.csv").write_text("text,label\na,b\n")
    stale = time.time() - (inputs.UPLOAD_DAYS + 1) * 86400
    os.utime(old, (stale, stale))
    kept = Path(cache.save_upload("new.csv", b"text,label\nhello,x\n"))
    assert kept.exists() and not old.exists()


# ---------------------------------------------------------------- 11. small ones


def test_na_and_none_are_texts_not_missing_values(tmp_path):
    frame = sentiment_frame()
    frame.loc[0, "text"], frame.loc[1, "text"], frame.loc[2, "text"] = "NA", "None", "null"
    task = load_task(write_csv(tmp_path / "na.csv", frame))
    texts = [t for split in task.texts.values() for t in split]
    assert {"NA", "None", "null"} <= set(texts) and len(texts) == len(frame)


def test_a_blank_label_is_still_missing(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,label\ngood,positive\nbad,\nfine,negative\n")
    with pytest.raises(ValueError, match="missing label"):
        load_task(path)


def test_negative_max_iters_is_refused():
    from lowrank.methods import get_method

    with pytest.raises(ValueError, match="max_iters"):
        get_method("tfwsvd").check_options({"max_iters": -1})
    with pytest.raises(ValueError, match="max_iters"):
        get_method("sparsity_aware").check_options({"max_iters": -1})


def test_a_broken_local_folder_is_not_blamed_on_the_hub(tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("LOWRANK_OFFLINE", "1")
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as broken:
        load_model(str(folder))
    with pytest.raises(ModelLoadError) as missing:
        load_model(str(tmp_path / "no-such-folder"))
    for err in (broken, missing):
        assert "hub" not in str(err.value), err.value
    assert "no such folder" in str(missing.value)
