"""First run: the dashboard builds the default model in the background (one build, whichever session asks, shown on
Home with its step and time left), works on the model it is built from meanwhile, and offers to fine-tune any model
whose head is untrained wherever its accuracy is shown; the demo never runs on an untrained head.

AppTest on tiny models: ``LOWRANK_FINETUNE_RECIPE`` makes every build a few steps of the tiny encoder on a small CSV,
and ``LOWRANK_CACHE`` a temporary folder where ``minilm-rt`` is not built.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dashboard import layout
from lowrank.experiments import build, jobs
from lowrank.experiments.store import RunStore
from lowrank.training.finetune import RECIPE_ENV, recipe_for

ROOT = Path(__file__).resolve().parents[2]
TINY = {"max_steps": 3, "batch_size": 4, "max_length": 16}
DEAD_PID = 2**22 + 1  # above the largest pid Linux allows: never a live process
FINETUNE = "Fine-tune in the background"


@pytest.fixture()
def first_run(monkeypatch, tmp_path, tiny_encoder_dir, sentiment_csv):
    """A machine where the default model (``minilm-rt``, no ``LOWRANK_DEFAULT_MODEL``) is not built."""
    import streamlit as st
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_THREADS", str(torch.get_num_threads()))
    monkeypatch.delenv("LOWRANK_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(sentiment_csv))
    monkeypatch.setenv("LOWRANK_CACHE", str(cache))
    monkeypatch.setenv(
        RECIPE_ENV, json.dumps({"base": str(tiny_encoder_dir), "task": str(sentiment_csv), "config": TINY})
    )
    st.cache_data.clear()
    st.cache_resource.clear()
    return cache


@pytest.fixture()
def spawned(monkeypatch) -> list:
    """No worker process: every build start is recorded, and this test process owns the build."""
    calls = []
    monkeypatch.setattr(jobs, "spawn", lambda args, log: calls.append(args) or os.getpid())
    return calls


def new_app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def visit(at, key: str):
    at.switch_page(layout.page(key).script).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def click(at, label: str):
    button(at, label).click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def progress_texts(at) -> list[str]:
    return [p.text for p in at.get("progress")]


def wait_for_build(store: RunStore, build_id: int, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = store.get_build(build_id)
        if row["status"] != "running":
            return row
        time.sleep(0.5)
    raise AssertionError(
        f"build {build_id} still running after {timeout} s: "
        f"{build.log_path(store, build_id).read_text(errors='replace')[-2000:]}"
    )


def test_a_first_run_builds_the_default_model_once_and_new_sessions_start_on_it(first_run, tiny_encoder_dir):
    store = RunStore(first_run / "runs.sqlite")
    at = new_app()  # Home, in a detached worker process
    builds = store.builds()
    assert [b["name"] for b in builds] == ["minilm-rt"]
    assert at.session_state["model"] == str(tiny_encoder_dir)  # meanwhile: the model it is built from, which loads
    assert any(text.startswith("Building minilm-rt") for text in progress_texts(at))
    assert button(at, "Run the demo").disabled
    assert any("not built yet" in i.value for i in at.info)

    second = new_app()  # another tab or server: the same build
    assert len(store.builds()) == 1 and second.session_state["model"] == str(tiny_encoder_dir)
    row = wait_for_build(store, int(builds[0]["id"]))
    assert row["status"] == "done", row
    assert row["step"] == row["total"] == TINY["max_steps"] and row["message"].startswith("built: validation accuracy")

    at.run()  # the first session: the build is offered, the session keeps its model until asked
    assert not progress_texts(at) and any("minilm-rt is built" in s.value for s in at.success)
    click(at, "Use minilm-rt")
    assert at.session_state["model"] == "minilm-rt"
    assert not button(at, "Run the demo").disabled

    third = new_app()  # a session opened after the build starts on it; nothing is built again
    assert third.session_state["model"] == "minilm-rt" and len(store.builds()) == 1
    assert not button(third, "Run the demo").disabled and not any(
        "classification head" in w.value for w in third.warning
    )


def test_the_home_card_shows_step_and_time_left_and_a_dead_build_is_started_again(first_run, spawned):
    store = RunStore(first_run / "runs.sqlite")
    at = new_app()
    assert len(spawned) == 1
    build_id = int(store.builds()[0]["id"])
    store.update_build(build_id, step=10, total=40, started=time.time() - 100, message="fine-tuning, loss 0.512")
    at.run()
    assert progress_texts(at) == ["Building minilm-rt: fine-tuning, loss 0.512 · step 10 of 40 · about 5 min left"]
    assert at.get("progress")[0].value == 25

    new_app()  # a second session while it runs: no second build
    assert len(spawned) == 1 and len(store.builds()) == 1

    store.update_build(build_id, pid=DEAD_PID)  # its process died: interrupted, and the next session starts it again
    new_app()
    assert len(spawned) == 2 and [b["status"] for b in store.builds()] == ["running", "interrupted"]

    again = int(store.builds()[0]["id"])
    store.end_build(again, "failed", "failed", error="FloatingPointError: training loss became nan")
    at = new_app()  # a failed build is not started again by itself: Home says why, with a button
    assert len(spawned) == 2
    assert any("Building minilm-rt failed: FloatingPointError" in w.value for w in at.warning)
    assert button(at, "Run the demo").disabled
    click(at, "Build minilm-rt again")
    assert len(spawned) == 3 and store.builds()[0]["status"] == "running"
    assert any(text.startswith("Building minilm-rt") for text in progress_texts(at))


def test_an_untrained_head_is_labelled_with_a_fine_tune_button_wherever_its_accuracy_is_shown(
    first_run, spawned, monkeypatch, tiny_encoder_dir, sentiment_csv, fake_runs
):
    model, task = str(tiny_encoder_dir), str(sentiment_csv)
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", model)  # a default model without a trained head: nothing is built
    store = RunStore(first_run / "runs.sqlite")
    at = new_app()
    assert not spawned and not store.builds()
    assert button(at, "Run the demo").disabled and any("The demo is off" in i.value for i in at.info)
    visit(at, "model")  # (before the stored fake dense run below, which lacks this page's measurements)
    assert any(m.label == "Accuracy (untrained head)" for m in at.metric)
    for page in ("model", "ranks", "factorize", "tradeoffs", "summary", "home"):
        if page != "model":
            visit(at, page)
        if page == "ranks":  # stored runs of a plan, for the pages that show compressed accuracies
            fake_runs(
                store, model, task, "factorize", {"dense": 0.5, "svd": 0.45}, ranks=at.session_state["plan"].ranks
            )
            continue
        if page == "factorize":
            assert any(m.label == "dense accuracy (untrained head)" for m in at.metric)
        assert any("no trained classification head" in w.value for w in at.warning), page
        assert button(at, FINETUNE), page

    click(at, FINETUNE)  # on Home: in the background, into a folder of the cache
    recipe = recipe_for(model, task)
    assert len(spawned) == 1 and [b["name"] for b in store.builds()] == [recipe.name]
    assert recipe.out.startswith(str(first_run / "finetuned"))
    for page in ("home", "summary"):
        visit(at, page)
        assert not any(b.label == FINETUNE for b in at.button), page  # running: its progress instead
        assert any(text.startswith(f"Building {Path(recipe.out).name}") for text in progress_texts(at)), page
