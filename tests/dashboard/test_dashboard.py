"""Dashboard pages under ``streamlit.testing.v1.AppTest`` on the tiny BERT and a small CSV task.

``LOWRANK_DEFAULT_MODEL`` / ``LOWRANK_DEFAULT_TASK`` point the app at the fixtures and
``LOWRANK_CACHE`` at a temporary folder, so no real model, cache or run store is touched.
"""

from __future__ import annotations

import ast
import base64
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dashboard import layout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(monkeypatch, tmp_path, tiny_bert_dir, sentiment_csv):
    import streamlit as st
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_THREADS", str(torch.get_num_threads()))  # the dashboard keeps the test's threads
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_bert_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(sentiment_csv))
    monkeypatch.setenv("LOWRANK_CACHE", str(cache))
    monkeypatch.setenv(
        "LOWRANK_MODEL_ROOTS", str(tiny_bert_dir.parent)
    )  # the test models may be typed in the model box
    st.cache_data.clear()
    st.cache_resource.clear()
    return cache


def new_app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)


def visit(at, key: str):
    at.switch_page(layout.page(key).script).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def plotly_specs(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(at) -> set[str]:
    return {trace.get("name") for spec in plotly_specs(at) for trace in spec["data"]}


def click(at, label: str):
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def wait_for_job(store, table: str, job_id: int, timeout: float = 240.0) -> dict:
    """The row of background job ``job_id`` of ``table`` once it is no longer running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = store.get_job(table, job_id)
        if row["status"] != "running":
            return row
        time.sleep(1.0)
    raise AssertionError(f"{table} {job_id} still running after {timeout} s: {store.get_job(table, job_id)}")


def wait_for_sweep(store, sweep_id: int, timeout: float = 240.0) -> dict:
    return wait_for_job(store, "sweeps", sweep_id, timeout)


def test_every_page_renders(env):
    at = new_app().run()
    assert not at.exception
    assert at.title[0].value == "lowrank-studio"
    assert any(b.label == "Run the demo" for b in at.button)

    visit(at, "model")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Compressible layers"] == "12"  # 2 blocks x (q, k, v, o, up, down)
    assert metrics["Accuracy"] != "–"  # dense accuracy measured and stored

    visit(at, "spectra")
    specs = plotly_specs(at)
    assert len(specs) == 3  # spectrum, energy, heatmap
    assert specs[0]["layout"]["yaxis"]["type"] == "log"
    assert specs[2]["data"][0]["type"] == "heatmap"

    visit(at, "ranks")
    assert len(at.data_editor) == 1
    assert len(at.data_editor[0].value) == 12

    visit(at, "factorize")
    assert at.multiselect[0].value == ["svd", "kfac_svd"]  # lowrank.methods.COMPARISON
    import lowrank

    assert [o.split(" ")[0] for o in at.multiselect[0].options] == lowrank.methods.run_methods(
        True
    )  # a classifier runs block sweeps

    visit(at, "tradeoffs")
    assert any(i.value.startswith("No finished runs") for i in at.info) or plotly_specs(at)

    visit(at, "home")  # the status cards show the plan the Ranks page made
    assert any("layers factorized" in m.value for m in at.markdown)


def test_bad_inputs_show_messages_not_tracebacks(env, tmp_path, monkeypatch):
    at = new_app().run()
    visit(at, "model")
    at.radio(key="model_source").set_value("Hugging Face id or local folder").run()
    at.text_input[0].input(str(tmp_path / "no-such-model"))
    at.form_submit_button[0].click().run()
    assert not at.exception
    assert any("not a model folder" in e.value or "cannot load" in e.value.lower() for e in at.error), [
        e.value for e in at.error
    ]

    at.radio(key="task_choice").set_value("upload").run()
    at.file_uploader[0].upload("broken.csv", b"sentence,score\nhello,1\n", "text/csv").run()
    assert not at.exception
    assert any("needs columns 'text' and 'label'" in e.value for e in at.error), [e.value for e in at.error]

    bad = tmp_path / "empty.csv"
    bad.write_text("")
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(bad))
    at = new_app().run()
    for page in ("model", "spectra", "ranks", "factorize"):
        visit(at, page)
        assert any("empty" in e.value for e in at.error), (page, [e.value for e in at.error])


def edit_rank(at, row: int, typed):
    """Type ``typed`` into the rank cell of ``row`` of the current rank editor and rerun."""
    key = f"rank_editor_{at.session_state['editor_version']}"
    at.session_state[key] = {"edited_rows": {row: {"rank": typed}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def shown_row(at, row: int) -> tuple[str, str]:
    """(rank shown, message shown) in ``row`` of the rank editor."""
    frame = at.data_editor[0].value
    return str(frame["rank"].iloc[row]), str(frame["message"].iloc[row])


@pytest.mark.parametrize(
    "typed, words",
    [
        ("abc", "not a number"),
        ("-5", "out of range"),
        ("2.5", "not a whole number"),
        ("99999", "out of range"),
        (10_000, "out of range"),
    ],
)
def test_rank_editor_refuses_an_invalid_cell_at_its_row_and_reverts_it(env, typed, words):
    at = new_app().run()
    visit(at, "ranks")
    plan = at.session_state["plan"]
    before = shown_row(at, 0)[0]
    kept = next(m.value for m in at.metric if m.label == "Kept parameters")
    edit_rank(at, 0, typed)
    assert at.session_state["plan"].ranks == plan.ranks  # nothing coerced: the plan is unchanged
    rank, message = shown_row(at, 0)
    assert rank == before  # the cell shows the plan's rank again
    assert message.startswith("refused") and words in message
    assert any(words in e.value for e in at.error)
    assert next(m.value for m in at.metric if m.label == "Kept parameters") == kept

    edit_rank(at, 0, "3")  # a valid edit clears the message
    assert at.session_state["plan"].layers[0].rank == 3
    assert shown_row(at, 0) == ("3", "") and not at.error


def test_rank_edits_update_the_plan_fill_import_and_export(env):
    at = new_app().run()
    visit(at, "ranks")
    edit_rank(at, 0, "3")
    assert at.session_state["plan"].layers[0].rank == 3
    totals = {m.label: m.value for m in at.metric}
    assert totals["Kept parameters"] == f"{at.session_state['plan'].params:,}"

    edit_rank(at, 0, "40")  # at or above break-even (64x64: 32) -> kept dense, with a note at the row
    assert at.session_state["plan"].layers[0].rank is None
    assert any("break-even" in w.value for w in at.warning)
    assert shown_row(at, 0)[1].startswith("note") and shown_row(at, 0)[0] == ""

    # fill from a budget and a strategy, export, re-import
    at.slider(key="ranks_budget").set_value(0.3)
    at.selectbox(key="ranks_strategy").set_value("energy")
    click(at, "Fill ranks")
    filled = at.session_state["plan"]
    assert filled.strategy == "energy" and filled.params <= filled.budget
    exported = filled.to_json().encode()
    at.session_state["plan"] = None
    at.file_uploader(key="plan_upload").upload("plan.json", exported, "application/json").run()
    assert not at.exception
    assert at.session_state["plan"].ranks == filled.ranks

    at.file_uploader(key="plan_upload").upload("other.json", b'{"format": "nope"}', "application/json").run()
    assert any("not a rank plan" in e.value for e in at.error)


def test_spectra_fisher_heatmaps(env):
    at = new_app().run()
    visit(at, "spectra")
    at.segmented_control(key="heatmap_metric").set_value("dispersion").run()
    next(b for b in at.button if b.label == "Compute Fisher information").click().run()
    assert not at.exception
    assert any(
        spec["data"][0]["type"] == "heatmap" and "Fisher dispersion" in spec["data"][0]["hovertemplate"]
        for spec in plotly_specs(at)
    )
    at.segmented_control(key="heatmap_metric").set_value("risk").run()
    assert not at.exception
    assert any("SVD risk" in spec["data"][0].get("hovertemplate", "") for spec in plotly_specs(at))
    assert at.success or at.warning  # the whole-model verdict


@pytest.mark.parametrize(
    "statistic, label, term",
    [("taylor", "Taylor loss change", "total"), ("output_change", "predicted output change", "second_order")],
)
def test_spectra_taylor_heatmaps_show_the_library_estimate(env, tiny_bert_dir, sentiment_csv, statistic, label, term):
    import lowrank
    from lowrank.statistics.taylor import svd_loss_change

    at = new_app().run()
    visit(at, "spectra")
    at.segmented_control(key="heatmap_metric").set_value(statistic).run()
    assert not at.exception, [e.message for e in at.exception]
    heat = next(spec["data"][0] for spec in plotly_specs(at) if spec["data"][0]["type"] == "heatmap")
    assert label in heat["hovertemplate"]
    z = heat["z"]  # plotly's typed-array encoding: {"dtype", "bdata" (base64), "shape": "rows, cols"}
    shape = tuple(int(n) for n in z["shape"].split(","))
    z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    shown = {name: value for names, values in zip(heat["customdata"], z) for name, value in zip(names, values)}

    loaded = lowrank.load_model(str(tiny_bert_dir))
    expected = svd_loss_change(loaded, lowrank.load_task(str(sentiment_csv)), 0.5)  # the default sample
    assert set(shown) == set(expected)
    for name, estimate in expected.items():
        assert shown[name] == pytest.approx(estimate[term], rel=1e-4, abs=1e-9)


def test_spectra_under_the_kfac_metric_plot_the_singular_values_of_the_whitened_weight(
    env, tiny_bert_dir, sentiment_csv
):
    """The metric choice replaces W by the matrix the method truncates: for kfac_svd, L_G^T W L_A from the moments of
    the default sample (computed by the page, read back here from the same cache)."""
    import lowrank
    from lowrank.methods.roots import psd_root
    from lowrank.models.architectures import compressible_linears
    from lowrank.statistics import DEFAULT, statistics_for

    at = new_app().run()
    visit(at, "spectra")
    plain = {trace["customdata"][0]: plotted(trace) for trace in plotly_specs(at)[0]["data"]}
    at.segmented_control(key="spectra_metric").set_value("kfac_svd").run()
    assert not at.exception, [e.message for e in at.exception]
    shown = {trace["customdata"][0]: plotted(trace) for trace in plotly_specs(at)[0]["data"]}
    assert set(shown) == set(plain) and shown != plain

    loaded = lowrank.load_model(str(tiny_bert_dir), task=lowrank.load_task(str(sentiment_csv)))
    stats = statistics_for(loaded, str(sentiment_csv), ("activations", "gradients"), DEFAULT)
    linears = compressible_linears(loaded.model)
    for name, values in shown.items():
        L_A = psd_root(stats[name]["input_moment"]).L  # the safeguarded roots kfac_svd uses (moments may be singular)
        L_G = psd_root(stats[name]["grad_moment"]).L
        expected = torch.linalg.svdvals(L_G.T @ linears[name].weight.detach().double() @ L_A)
        np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-6 * float(expected[0]))


PLUGIN = """
from lowrank.methods import Factorization, Option, register_method, truncated_svd


@register_method("dummy_test", "Plain SVD under another name (a test method).",
                 options={"mode": Option("a", ("a", "b"), "a choice"), "scale": Option(1.0, help="a number"),
                          "steps": Option(None, help="empty: the default")})
def dummy(W, rank, stats, mode="a", scale=1.0, steps=None):
    return Factorization(*truncated_svd(W, rank), info={"mode": mode, "scale": scale, "steps": steps})
"""


def test_a_new_method_appears_with_widgets_from_its_options(env, tmp_path, monkeypatch):
    """A method registered outside lowrank (here: a plugin module) is offered on the Factorize and Trade-offs pages,
    with one widget per declared option, and runs in the background worker with the chosen values."""
    from lowrank.experiments.store import RunStore
    from lowrank.methods import METHODS

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dummy_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p))
    importlib.import_module("dummy_test_plugin")
    try:
        at = new_app().run()
        visit(at, "factorize")
        picker = at.multiselect(key="factorize_methods")
        assert "dummy_test" in [o.split(" ")[0] for o in picker.options]
        picker.set_value(["dummy_test"]).run()
        assert at.selectbox(key="factorize_dummy_test_mode").options == ["a", "b"]
        assert at.number_input(key="factorize_dummy_test_scale").value == 1.0
        assert at.text_input(key="factorize_dummy_test_steps").value == ""
        at.selectbox(key="factorize_dummy_test_mode").set_value("b")
        at.text_input(key="factorize_dummy_test_steps").input("3")
        click(at, "Factorize and evaluate")
        assert not at.error, [e.value for e in at.error]
        store = RunStore(env / "runs.sqlite")
        assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
        run = store.runs(method="dummy_test", status="done").iloc[0]
        assert run["options"] == {"mode": "b", "scale": 1.0, "steps": 3}

        visit(at, "tradeoffs")
        assert "dummy_test" in [o.split(" ")[0] for o in at.form[0].multiselect[0].options]
    finally:
        METHODS.pop("dummy_test", None)
        sys.modules.pop("dummy_test_plugin", None)


def test_full_flow_load_plan_factorize_store_plot(env):
    from lowrank.experiments.store import RunStore

    at = new_app().run()
    visit(at, "model")
    visit(at, "ranks")
    at.slider(key="ranks_budget").set_value(0.5)
    at.selectbox(key="ranks_strategy").set_value("uniform")
    next(b for b in at.button if b.label == "Fill ranks").click().run()
    visit(at, "factorize")
    at.multiselect(key="factorize_methods").set_value(["svd", "tfwsvd"]).run()
    at.selectbox(key="factorize_tfwsvd_solver").set_value("em")
    click(at, "Factorize and evaluate")
    assert not at.error, [e.value for e in at.error]
    store = RunStore(env / "runs.sqlite")
    assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
    at.run()
    assert not at.exception, [e.message for e in at.exception]

    runs = store.runs(status="done")
    assert set(runs["method"]) == {"dense", "svd", "tfwsvd"}
    tfwsvd = runs[runs["method"] == "tfwsvd"].iloc[0]
    assert (
        tfwsvd["solver"] == "em"
        and tfwsvd["strategy"] == "uniform"
        and tfwsvd["budget"] == pytest.approx(0.5, abs=0.02)
    )
    assert 0 < tfwsvd["kept_fraction"] < 0.55 and tfwsvd["size_bytes"] > 0 and tfwsvd["latency_ms_b1"] > 0
    assert tfwsvd["latency_info"]["conditions"]["threads"] >= 1  # how the latency was measured is stored with it
    assert any("weighted error per iteration" in s["layout"]["title"]["text"] for s in plotly_specs(at))  # convergence

    saved = Path(store.runs(method="svd")["output_dir"].iloc[0])  # the worker saved every compressed model
    assert (saved / "lowrank.json").exists() and (saved / "model.safetensors").exists()
    assert sum(d.label.startswith("Download") for d in at.download_button) == 2

    visit(at, "tradeoffs")
    assert {"svd", "tfwsvd", "dense", "Pareto front"} <= trace_names(at)


def test_background_sweep_and_demo(env):
    from lowrank.experiments.store import RunStore

    at = new_app().run()
    visit(at, "tradeoffs")
    form = at.form[0]
    form.multiselect[0].set_value(["svd"])
    form.multiselect[1].set_value([0.5])
    form.selectbox[0].set_value("energy")
    at.form_submit_button[0].click().run()
    assert not at.exception
    store = RunStore(env / "runs.sqlite")
    sweep = store.sweeps().iloc[0]
    assert wait_for_sweep(store, int(sweep["id"]))["status"] == "done"
    at.run()  # a reload reads everything back from the store
    assert {"svd", "dense"} <= trace_names(at)
    assert set(store.runs(sweep_id=int(sweep["id"]))["strategy"].dropna()) == {"energy"}

    at = new_app().run()  # a fresh session: a hand-edited plan, then the demo
    visit(at, "ranks")
    edit_rank(at, 0, "3")
    edited = at.session_state["plan"]
    visit(at, "home")
    click(at, "Run the demo")
    assert any("replaces your hand-edited rank plan" in w.value for w in at.warning)
    assert at.session_state["plan"] is edited and len(store.sweeps()) == 1  # nothing replaced, nothing started
    click(at, "Keep my plan")
    assert at.session_state["plan"] is edited and len(store.sweeps()) == 1
    assert not any("replaces your hand-edited" in w.value for w in at.warning)
    click(at, "Run the demo")
    click(at, "Replace it and run the demo")
    demo = store.sweeps().iloc[0]
    assert demo["label"] == "demo"
    assert at.session_state["plan"].strategy == "uniform"
    assert wait_for_sweep(store, int(demo["id"]))["status"] == "done"
    at.run()
    assert {"svd", "kfac_svd", "dense", "Pareto front"} <= trace_names(at)
    assert any("keeping" in m.value for m in at.markdown)


def test_a_causal_lm_gets_a_text_task_and_rendering_stores_no_failed_run(
    env, seed_lee, tiny_llama_dir, sentiment_csv, monkeypatch
):
    from lowrank.experiments.store import RunStore

    seed_lee(env)
    store = RunStore(env / "runs.sqlite")
    at = new_app().run()
    visit(at, "model")
    at.radio(key="model_source").set_value("Hugging Face id or local folder").run()
    at.text_input[0].input(str(tiny_llama_dir))
    at.form_submit_button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["model"] == str(tiny_llama_dir) and at.session_state["task"] == "lee"
    assert any("causal language model" in i.value and "Lee" in i.value for i in at.info)  # says why the task changed
    offered = at.radio(key="task_choice").options
    assert len(offered) == 1 and "Lee" in offered[0]  # no classification task, no CSV upload
    assert {m.label for m in at.metric} >= {"Perplexity", "Latency, batch 32"}
    for _ in range(2):  # render every page twice
        for entry in layout.PAGES:
            visit(at, entry.key)
            assert not at.error, (entry.key, [e.value for e in at.error])
    assert store.runs(status=["failed", "interrupted"]).empty

    # a session that starts on an incompatible pair (the environment's defaults) gets the text task
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_llama_dir))
    at = new_app().run()
    assert at.session_state["task"] == "lee"
    # and a pair that cannot be measured is refused in words on every page, recording nothing
    at.session_state["task"] = str(sentiment_csv)
    for page in ("spectra", "ranks", "factorize"):
        visit(at, page)
        assert any("causal language model, not a classifier" in e.value for e in at.error), (
            page,
            [e.value for e in at.error],
        )
    assert store.runs(status=["failed", "interrupted"]).empty


def test_a_factorize_run_goes_on_when_the_page_is_left_and_its_result_appears_on_return(env):
    from lowrank.experiments.store import RunStore

    at = new_app().run()
    visit(at, "factorize")
    plan = at.session_state["plan"]
    at.multiselect(key="factorize_methods").set_value(["svd"]).run()
    click(at, "Factorize and evaluate")
    assert not at.error, [e.value for e in at.error]
    visit(at, "spectra")  # leave the page while the run goes on
    store = RunStore(env / "runs.sqlite")
    sweep = store.sweeps().iloc[0]
    assert sweep["label"] == "factorize" and sweep["spec"]["ranks"] == plan.ranks
    assert wait_for_sweep(store, int(sweep["id"]))["status"] == "done"
    assert store.runs(status=["failed", "interrupted"]).empty
    run = store.runs(method="svd").iloc[0]
    assert run["status"] == "done" and run["ranks"] == plan.ranks

    for session in (at, new_app().run()):  # the same session coming back, and a reload
        visit(session, "factorize")
        assert any(h.value == "Before and after" for h in session.subheader)
        assert "svd" in {m.label for m in session.metric}
        assert any(d.label.startswith("Download") for d in session.download_button)


def test_a_result_that_destroys_the_model_is_flagged_on_every_page_showing_it(
    env, tiny_bert_dir, sentiment_csv, fake_runs
):
    from lowrank.experiments.store import RunStore

    store = RunStore(env / "runs.sqlite")
    model, task = str(tiny_bert_dir), str(sentiment_csv)
    fake_runs(store, model, task, "demo", {"dense": 0.9, "svd": 0.375, "fwsvd": 0.85})
    at = new_app().run()
    visit(at, "ranks")
    plan = at.session_state["plan"]
    fake_runs(store, model, task, "factorize", {"dense": 0.9, "svd": 0.375, "fwsvd": 0.85}, ranks=plan.ranks)

    for page in ("home", "factorize", "tradeoffs"):
        visit(at, page)
        warnings = [w.value for w in at.warning if "Destroyed by the factorization" in w.value]
        assert len(warnings) == 1 and "svd" in warnings[0] and "at chance" in warnings[0], (page, warnings)
        assert "fwsvd" not in warnings[0].replace("**svd**", "")
        if page != "factorize":
            assert "destroys the model" in trace_names(at), page
    visit(at, "factorize")
    assert "svd ✕ destroyed" in {m.label for m in at.metric} and "fwsvd" in {m.label for m in at.metric}


def plotted(trace: dict) -> list[float]:
    """The y values of a plotly trace (a list, or plotly's typed array: ``{"dtype", "bdata"}``, base64)."""
    y = trace["y"]
    if isinstance(y, dict):
        return list(np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])))
    return [float(v) for v in y]


def dense_plotted(at) -> list[float]:
    """The dense references drawn on the page (the star)."""
    return [
        v for spec in plotly_specs(at) for trace in spec["data"] if trace.get("name") == "dense" for v in plotted(trace)
    ]


def test_every_page_and_the_summary_compare_with_the_same_dense_run(env, tiny_bert_dir, sentiment_csv, fake_runs):
    """Two dense runs of the model and task measured otherwise (the test split; two batches) and a compressed run
    on two batches are stored first, then two sweeps on the whole validation split. Every page that shows a dense
    reference shows lowrank.experiments.compare.reference_run's, as the report's summary does, and compares it only
    with runs measured like it (the Trade-offs page once plotted the two-batch run too)."""
    import lowrank
    from lowrank.experiments.compare import comparable, reference_run
    from lowrank.experiments.run import run_fields
    from lowrank.experiments.store import RunStore
    from lowrank.report import summary
    from lowrank.report.formats import format_metric

    store = RunStore(env / "runs.sqlite")
    model, task = str(tiny_bert_dir), str(sentiment_csv)
    loaded = lowrank.load_model(model, task=task)
    for split, limit, method, value in (
        ("test", None, "dense", 0.55),
        ("validation", 2, "dense", 0.6),
        ("validation", 2, "svd", 0.99),
    ):
        run_id = store.start_run(
            **run_fields(loaded, task, split, limit), method=method, strategy="uniform", budget=0.5
        )
        store.finish_run(
            run_id, metric="accuracy", value=value, params_linear=5_000, size_bytes=1000, latency_ms_b1=1.0
        )
    fake_runs(store, model, task, "demo", {"dense": 0.88, "svd": 0.8, "fwsvd": 0.85})
    fake_runs(store, model, task, "factorize", {"dense": 0.9, "svd": 0.8, "fwsvd": 0.85})
    for run_id in store.runs(method="dense", eval_limit=None, split="validation")["id"]:
        store.update_run(int(run_id), loss=0.3, examples=40)  # what the Model & task page shows beside the accuracy

    reference = reference_run(store, task, model=model)
    result = summary(store, model, task)
    assert reference["value"] == 0.9 and result.dense["id"] == reference["id"]
    compared = sorted(result.runs.loc[result.runs["method"] != "dense", "value"])
    assert compared == [0.8, 0.85]  # the newest run of each method and budget measured like the reference
    shown = format_metric("accuracy", reference["value"])

    def metrics(at) -> dict[str, str]:
        return {m.label: m.value for m in at.metric}

    def home(at):
        assert any(m.value == f"**accuracy {shown}**" for m in at.markdown)  # the status card
        assert any(f"(dense {shown})" in m.value for m in at.markdown) and dense_plotted(at) == [0.9]  # the demo

    def model_and_task(at):
        assert metrics(at)["Accuracy"] == shown

    def factorize(at):
        assert metrics(at)["dense accuracy"] == shown

    def tradeoffs(at):
        assert dense_plotted(at) == [0.9]
        runs = [trace for spec in plotly_specs(at) for trace in spec["data"] if trace.get("name") in ("svd", "fwsvd")]
        done = store.runs(model=model, task=task, status="done")
        measured_alike = comparable(done[done["method"] != "dense"], reference)
        assert sorted(v for trace in runs for v in plotted(trace)) == sorted(measured_alike["value"])
        assert 0.99 not in measured_alike["value"].tolist()

    def summary_page(at):
        assert dense_plotted(at) == [0.9]
        assert list(at.dataframe[0].value["vs dense"]) == pytest.approx([0.85 - 0.9])
        assert f"dense {shown}" in next(m.help for m in at.metric if m.label.startswith("fwsvd"))

    checks = {
        "home": home,
        "model": model_and_task,
        "factorize": factorize,
        "tradeoffs": tradeoffs,
        "summary": summary_page,
    }
    no_reference = {"spectra", "ranks"}  # pages that show no dense run
    assert set(checks) | no_reference == {entry.key for entry in layout.PAGES}
    at = new_app().run()
    for entry in layout.PAGES:
        visit(at, entry.key)
        if entry.key in checks:
            checks[entry.key](at)


def test_every_link_names_a_page_of_the_table():
    """Pages link to each other by key through the page table (layout.link), never by file name; the table's
    scripts are the files in pages/, one entry each."""
    keys, paths = set(), []
    for path in [ROOT / "app.py", *(ROOT / "dashboard").glob("*.py"), *(ROOT / "pages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in ("link", "page"):
                keys.add(node.args[0].value)
            if name in ("page_link", "switch_page", "Page"):
                paths.append(f"{path.name}:{node.lineno}")
    table = [entry.key for entry in layout.PAGES]
    assert {"model", "ranks", "tradeoffs"} <= keys <= set(table) and len(set(table)) == len(table)
    assert paths == []  # no link names a script
    assert sorted(entry.script for entry in layout.PAGES) == sorted(
        f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py")
    )
    with pytest.raises(KeyError, match="no page 'nope'"):
        layout.page("nope")


def test_heatmap_colours_are_not_swamped_by_one_outlier():
    from dashboard import plots

    rng = np.random.default_rng(0)
    rows = [
        {"name": f"layer{b}.{t}", "block": b, "type": t, "risk": float(rng.uniform(0.8, 1.6))}
        for b in range(6)
        for t in ("q", "k", "v", "o", "up", "down")
    ]
    rows[7]["risk"] = 28.2
    heat = plots.heatmap_figure(pd.DataFrame(rows), "risk").data[0]
    assert heat.zmax < 2.0 and heat.zmin >= 0.8  # the colours span the 35 other cells
    text = [cell for line in heat.text for cell in line]
    assert text[7] == "28.2 ▲" and sum("▲" in cell for cell in text) == 1
    assert "outlier" in plots.heatmap_figure(pd.DataFrame(rows), "risk").layout.title.text

    signed = [{**row, "taylor": float(rng.normal(0, 2e-4))} for row in rows]  # Taylor estimates: both signs
    fig = plots.heatmap_figure(pd.DataFrame(signed), "taylor")
    assert fig.data[0].zmid == 0.0 and fig.data[0].zmax == -fig.data[0].zmin
    assert fig.data[0].colorbar.tickformat == ".3~g"  # no SI prefixes such as -500μ


def test_spectra_are_painted_from_the_disk_cache_by_a_fresh_server(env, monkeypatch):
    import streamlit as st

    import lowrank

    at = new_app().run()
    visit(at, "spectra")
    assert list((env / "spectra").glob("*.parquet"))
    st.cache_data.clear()
    st.cache_resource.clear()  # as a fresh server

    def no_svd(*args, **kwargs):
        raise AssertionError("spectra computed again")

    monkeypatch.setattr(lowrank, "spectra", no_svd)
    at = new_app().run()
    visit(at, "spectra")
    assert len(plotly_specs(at)) == 3 and not at.error


def test_factorize_asks_for_the_calibration_sample_of_data_aware_methods_and_warns_when_it_is_small_or_foreign(env):
    at = new_app().run()
    visit(at, "factorize")
    at.multiselect(key="factorize_methods").set_value(["svd"]).run()
    assert not [t for t in at.text_input if t.key == "factorize_calibration_task"]  # svd takes no data
    at.multiselect(key="factorize_methods").set_value(["fwsvd"]).run()
    assert at.text_input(key="factorize_calibration_task").value == at.session_state["task"]
    assert not [w for w in at.warning if "calibrat" in w.value]
    at.number_input(key="factorize_calibration_tokens").set_value(4096).run()
    assert any("calibration sample is small: 4,096 tokens" in w.value for w in at.warning)
    at.text_input(key="factorize_calibration_task").input("lee").run()
    assert any("calibrated on lee but evaluated on" in w.value for w in at.warning)
    assert not at.exception and not at.error


def test_the_summary_shows_a_causal_lms_throughput_against_dense(env, seed_lee, tiny_llama_dir, monkeypatch):
    """Runs recorded by execute_run measure tokens/s of the compressed model and of dense in one process; the Summary
    shows them as metrics and in its headlines, and the HTML report says the same."""
    import lowrank
    from lowrank.experiments.run import execute_run
    from lowrank.experiments.store import RunStore
    from lowrank.report import render_html, summary

    seed_lee(env)
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", "lee")
    store = RunStore(env / "runs.sqlite")
    loaded = lowrank.load_model(str(tiny_llama_dir))
    fields = {"strategy": "uniform"}
    execute_run(store, loaded, "lee", "lee", "dense", {}, eval_limit=1, fields={**fields, "budget": 1.0})
    ranks = lowrank.resolve_ranks(loaded.model, 0.5)
    execute_run(store, loaded, "lee", "lee", "svd", ranks, eval_limit=1, fields={**fields, "budget": 0.5})
    stored = store.runs(method="svd").iloc[0]["throughput"]
    assert stored["ratio"]["decode_b1"] == pytest.approx(stored["decode_b1"] / stored["dense"]["decode_b1"])

    at = visit(new_app().run(), "summary")
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m for m in at.metric}
    assert {"generating, batch 1", "generating, batch 8", "reading prompts, batch 8"} <= set(metrics)
    shown = metrics["generating, batch 1"]
    assert shown.value == f"{stored['decode_b1']:,.0f} tokens/s"
    assert f"{stored['ratio']['decode_b1']:.2f}x dense" in shown.proto.delta
    line = next(m.value for m in at.markdown if "tokens per second" in m.value)
    assert "of the FLOP bound" in line and "KV cache" in line
    html = render_html(summary(store, str(tiny_llama_dir), "lee"), [])
    assert "the dense model&#x27;s tokens per second" in html or "the dense model's tokens per second" in html


def test_spectra_under_a_metric_are_read_from_disk_until_the_statistics_change(
    env, monkeypatch, tiny_bert_dir, sentiment_csv
):
    """A fresh server paints the K-FAC spectra from disk without computing them; once the statistics cache file holds
    new moments (here G scaled by 4, so every singular value of L_G^T W L_A doubles) they are computed again, by a
    fresh server and by a running one whose memory still holds the old moments and spectra (another process
    rewrote the file)."""
    import streamlit as st
    from safetensors import safe_open

    import lowrank
    from lowrank.statistics import cache as stats_cache
    from lowrank.statistics.resolve import cache_entries

    def kfac_spectra(at=None):
        if at is None:
            at = new_app().run()
            visit(at, "spectra")
        at.segmented_control(key="spectra_metric").set_value("kfac_svd").run()
        assert not at.exception, [e.message for e in at.exception]
        return {trace["customdata"][0]: np.array(plotted(trace)) for trace in plotly_specs(at)[0]["data"]}

    def fresh_server():
        st.cache_data.clear()
        st.cache_resource.clear()

    def scale_grad_moments(factor):
        loaded = lowrank.load_model(str(tiny_bert_dir), task=lowrank.load_task(str(sentiment_csv)))
        entries = cache_entries(loaded, str(sentiment_csv), ("activations", "gradients"))
        (entry,) = [p for p in entries if any(k.endswith("::grad_moment") for k in stats_cache.read(p))]
        with safe_open(str(entry), "pt") as fh:
            settings = {k: v for k, v in fh.metadata().items() if k != "sha256"}
        tensors = stats_cache.read(entry)
        scaled = {k: v * factor if k.endswith("::grad_moment") else v for k, v in tensors.items()}
        stats_cache.write(entry, scaled, settings)

    first = kfac_spectra()
    assert len(list((env / "spectra" / "kfac_svd").glob("*.parquet"))) == 1
    fresh_server()
    computed = []
    compute = lowrank.spectra
    monkeypatch.setattr(lowrank, "spectra", lambda *a, **k: computed.append(k.get("metric")) or compute(*a, **k))
    running = new_app().run()
    visit(running, "spectra")
    assert {k: v.tolist() for k, v in kfac_spectra(running).items()} == {k: v.tolist() for k, v in first.items()}
    assert "kfac_svd" not in computed  # read back from disk

    scale_grad_moments(4)
    fresh_server()
    second = kfac_spectra()
    assert computed.count("kfac_svd") == 2  # new statistics: the chosen layers, then every layer; not the stale entry
    assert set(second) == set(first)
    for name in first:
        np.testing.assert_allclose(second[name], 2 * first[name], rtol=1e-4, atol=1e-6 * float(first[name][0]))
    assert len(list((env / "spectra" / "kfac_svd").glob("*.parquet"))) == 2

    scale_grad_moments(4)  # the server that showed ``first`` is still running, its caches full
    visit(running, "ranks")
    visit(running, "spectra")
    third = kfac_spectra(running)
    for name in first:
        np.testing.assert_allclose(third[name], 4 * first[name], rtol=1e-4, atol=1e-6 * float(first[name][0]))
