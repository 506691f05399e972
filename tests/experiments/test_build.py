"""Background builds of fine-tuned models (lowrank.experiments.build, the run store's ``builds`` table) and their
recipes (lowrank.training.finetune.recipe_for): one build per model at a time, dead owners, progress and ETA."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowrank.experiments import build, jobs, stop
from lowrank.experiments.store import RunStore
from lowrank.files.cache import cache_dir
from lowrank.models.packaged import finetuned_dir
from lowrank.training.finetune import MINILM_RT_CONFIG, RECIPE_ENV, Recipe, TrainConfig, recipe_for
from tests import conftest

DEAD_PID = 2**22 + 1  # above the largest pid Linux allows: never a live process
TINY = {"max_steps": 3, "batch_size": 4, "max_length": 16}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RECIPE_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture()
def spawned(monkeypatch) -> list:
    """No worker process: start_build records its arguments, and this test process owns the build."""
    calls = []
    monkeypatch.setattr(jobs, "spawn", lambda args, log: calls.append(args) or os.getpid())
    return calls


def test_recipes_of_packaged_and_other_models(cache, tiny_encoder_dir, sentiment_csv, monkeypatch):
    rt = recipe_for("minilm-rt")
    assert (rt.name, rt.base, rt.task, rt.out) == (
        "minilm-rt",
        "minilm",
        "rotten_tomatoes",
        str(finetuned_dir("minilm-rt")),
    )
    assert rt.config == TrainConfig(**rt.config).__dict__ == MINILM_RT_CONFIG.__dict__
    assert recipe_for("minilm", "rotten_tomatoes") == rt and recipe_for("minilm", "sms_spam").name == "minilm-sms_spam"
    assert rt.command == "python -m lowrank prepare --build minilm-rt" and not rt.built
    other = recipe_for(str(tiny_encoder_dir), str(sentiment_csv))
    assert other.name == other.out and other.out.startswith(
        str(cache / "finetuned" / f"{tiny_encoder_dir.name}-sentiment-")
    )
    assert other.config == TrainConfig().__dict__  # what `lowrank finetune --out` trains with
    assert other.command.startswith(f"lowrank finetune --model {tiny_encoder_dir} --task {sentiment_csv} --out ")
    assert recipe_for(str(tiny_encoder_dir), "rotten_tomatoes").out != other.out  # one folder per model and task
    with pytest.raises(ValueError, match="needs a task"):
        recipe_for(str(tiny_encoder_dir))

    monkeypatch.setenv(RECIPE_ENV, json.dumps({"base": str(tiny_encoder_dir), "config": {"max_steps": 2}}))
    tiny = recipe_for("minilm-rt")
    assert tiny.base == str(tiny_encoder_dir) and tiny.task == "rotten_tomatoes" and tiny.out == rt.out
    assert tiny.config == {**rt.config, "max_steps": 2}
    for bad, words in (("[1]", "JSON object"), ('{"out": "/tmp/x"}', "not out"), ("{", "not JSON")):
        monkeypatch.setenv(RECIPE_ENV, bad)
        with pytest.raises(ValueError, match=words):
            recipe_for("minilm-rt")


def test_one_build_per_model_at_a_time(cache, spawned):
    store = RunStore(cache / "runs.sqlite")
    recipe = recipe_for("minilm-rt")
    first = build.start_build(recipe, store)
    assert build.start_build(recipe, store) == first and len(spawned) == 1  # running: reused, not started again
    row = store.get_build(first)
    assert row["status"] == "running" and row["name"] == "minilm-rt" and Recipe.from_dict(row["spec"]) == recipe
    assert spawned[0] == ["--db", str(store.path), "--build", str(first)]
    other = build.start_build(recipe_for("minilm-sms_spam"), store)  # another model: its own build
    assert other != first and len(spawned) == 2

    store.update_build(first, pid=DEAD_PID)  # its process died
    assert store.get_build(first)["status"] == "interrupted"
    again = build.start_build(recipe, store)
    assert again not in (first, other) and len(spawned) == 3 and build.latest_build(store, "minilm-rt")["id"] == again

    store.end_build(again, "done", "built")
    (finetuned_dir("minilm-rt")).mkdir(parents=True)
    (finetuned_dir("minilm-rt") / "model.safetensors").write_bytes(b"")
    assert build.start_build(recipe, store) is None and len(spawned) == 3  # built: nothing to start


def test_a_build_whose_process_cannot_start_ends_failed_saying_why(cache, monkeypatch):
    def refuse(args, log):
        raise PermissionError(13, "Permission denied", str(log))

    monkeypatch.setattr(jobs, "spawn", refuse)
    store = RunStore(cache / "runs.sqlite")
    row = store.get_build(build.start_build(recipe_for("minilm-rt"), store))
    assert (
        row["status"] == "failed" and "cannot start its process" in row["error"] and "Permission denied" in row["error"]
    )


def test_a_build_of_another_host_that_stopped_reporting_ends_interrupted(cache, spawned):
    store = RunStore(cache / "runs.sqlite")
    build_id = build.start_build(recipe_for("minilm-rt"), store)
    store.update_build(build_id, host="another-host", pid=DEAD_PID)
    assert jobs.reap_stale(store) == []  # its heartbeat is fresh
    assert jobs.reap_stale(store, stale_after=-1.0) == [("builds", build_id)]
    row = store.get_build(build_id)
    assert row["status"] == "interrupted" and "another-host" in row["error"]


def test_eta_is_elapsed_per_step_times_the_steps_left():
    now = time.time()
    assert jobs.eta_s({"step": 10, "total": 40, "started": now - 100}, now) == pytest.approx(300.0)
    assert jobs.eta_s({"step": 0, "total": 40, "started": now}, now) is None
    assert jobs.eta_s({"step": 3, "total": None, "started": now}, now) is None


def test_progress_writes_are_throttled(cache):
    store = RunStore(cache / "runs.sqlite")
    build_id, _ = store.start_build("m", {}, needed=lambda: True)
    writes = []
    progress = jobs.StepProgress(jobs.Job(store, "builds", build_id), interval=60.0)
    original = store.update_job
    store.update_job = lambda table, i, **fields: writes.append(fields) or original(table, i, **fields)
    for step in range(100):
        progress(step, 100, f"step {step}")
    progress(100, 100, "saving")
    assert [w["step"] for w in writes] == [0, 100] and "started" in writes[0] and "started" not in writes[1]
    row = store.get_build(build_id)
    assert (row["step"], row["total"], row["message"]) == (100, 100, "saving")


def test_run_build_fine_tunes_records_progress_and_ends_done(cache, tiny_encoder_dir, sentiment_csv):
    store = RunStore(cache / "runs.sqlite")
    recipe = Recipe(
        "tiny-rt", str(tiny_encoder_dir), str(sentiment_csv), str(cache / "tiny-rt"), {**TrainConfig().__dict__, **TINY}
    )
    build_id, _ = store.start_build(recipe.name, recipe.to_dict(), needed=lambda: not recipe.built)
    record = build.run_build(store, build_id)
    row = store.get_build(build_id)
    assert row["status"] == "done" and (row["step"], row["total"]) == (3, 3) and row["started"] is not None
    assert row["message"] == f"built: validation accuracy {record['validation_accuracy']:.1%}"
    assert recipe.built and json.loads((cache / "tiny-rt" / "training.json").read_text()) == record


def test_a_stopped_build_ends_interrupted_and_leaves_no_folder(cache, tiny_encoder_dir, sentiment_csv, monkeypatch):
    store = RunStore(cache / "runs.sqlite")
    recipe = Recipe(
        "tiny-rt", str(tiny_encoder_dir), str(sentiment_csv), str(cache / "tiny-rt"), {**TrainConfig().__dict__, **TINY}
    )
    build_id, _ = store.start_build(recipe.name, recipe.to_dict(), needed=lambda: True)
    monkeypatch.setattr(stop, "_STOP", stop.threading.Event())
    stop.request_stop()  # what SIGTERM or a lost heartbeat does: the next progress tick stops it
    with pytest.raises(KeyboardInterrupt):
        build.run_build(store, build_id)
    row = store.get_build(build_id)
    assert row["status"] == "interrupted" and not recipe.built and not (cache / "tiny-rt").exists()
    assert row["host"] == socket.gethostname()


def test_a_test_cannot_start_a_background_job_in_the_users_cache(cache, monkeypatch):
    # the guard of every test (tests/conftest.py), pointed at this test's cache as if it were the user's
    monkeypatch.setattr(conftest, "USER_CACHE", cache.resolve())
    cache.mkdir(parents=True, exist_ok=True)
    store = RunStore(cache / "runs.sqlite")
    row = store.get_build(build.start_build(recipe_for("minilm-rt"), store))
    assert row["status"] == "failed" and "in the user's cache" in row["error"]


def test_the_test_session_and_its_subprocesses_use_a_cache_of_their_own():
    """Regression: a worker spawned during `make test` fine-tuned the real minilm-rt in the user's cache. Every process
    of the session resolves the cache to the session's own folder; only the downloaded packages are shared."""
    code = "from lowrank.files.cache import cache_dir; print(cache_dir())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(child).resolve() == cache_dir().resolve() == conftest.SESSION_CACHE.resolve() != conftest.USER_CACHE
    assert (cache_dir() / "assets").resolve() == conftest.USER_CACHE / "assets"
