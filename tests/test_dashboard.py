"""Dashboard pages under ``streamlit.testing.v1.AppTest`` on the tiny BERT and a small CSV task.

``LOWRANK_DEFAULT_MODEL`` / ``LOWRANK_DEFAULT_TASK`` point the app at the fixtures and
``LOWRANK_CACHE`` at a temporary folder, so no real model, cache or run store is touched.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "home": "pages/0_Home.py",
    "model": "pages/1_Model_and_task.py",
    "spectra": "pages/2_Spectra.py",
    "ranks": "pages/3_Ranks.py",
    "factorize": "pages/4_Factorize.py",
    "tradeoffs": "pages/5_Trade_offs.py",
}


@pytest.fixture()
def env(monkeypatch, tmp_path, tiny_bert_dir, sentiment_csv):
    import streamlit as st
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_THREADS", str(torch.get_num_threads()))  # the dashboard keeps the test's threads
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_bert_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(sentiment_csv))
    monkeypatch.setenv("LOWRANK_CACHE", str(cache))
    st.cache_data.clear()
    st.cache_resource.clear()
    return cache


def new_app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)


def visit(at, page: str):
    at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def plotly_specs(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(at) -> set[str]:
    return {trace.get("name") for spec in plotly_specs(at) for trace in spec["data"]}


def wait_for_sweep(store, sweep_id: int, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = store.get_sweep(sweep_id)
        if sweep["status"] != "running":
            return sweep
        time.sleep(1.0)
    raise AssertionError(f"sweep {sweep_id} still running after {timeout} s: {store.get_sweep(sweep_id)}")


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
    assert at.multiselect[0].value == ["svd", "fwsvd"]
    import lowrank

    assert [o.split(" ")[0] for o in at.multiselect[0].options] == lowrank.available_methods()  # all registered

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
    assert any("not a model folder" in e.value or "cannot load" in e.value.lower() for e in at.error), [e.value for e in at.error]

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


def test_rank_edits_update_the_plan_and_reject_bad_ranks(env):
    at = new_app().run()
    visit(at, "ranks")
    plan = at.session_state["plan"]
    first = plan.layers[0]
    key = f"rank_editor_{at.session_state['editor_version']}"

    at.session_state[key] = {"edited_rows": {0: {"rank": 10_000}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    assert any("out of range" in e.value for e in at.error)
    assert at.session_state["plan"].layers[0].rank == first.rank

    at.session_state[key] = {"edited_rows": {0: {"rank": 3}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    assert at.session_state["plan"].layers[0].rank == 3
    totals = {m.label: m.value for m in at.metric}
    assert totals["Kept parameters"] == f"{at.session_state['plan'].params:,}"

    # at or above break-even (64x64: 32) -> kept dense, with a note
    key = f"rank_editor_{at.session_state['editor_version']}"
    at.session_state[key] = {"edited_rows": {0: {"rank": 40}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert at.session_state["plan"].layers[0].rank is None
    assert any("break-even" in w.value for w in at.warning)

    # fill from a budget and a strategy, export, re-import
    at.slider(key="ranks_budget").set_value(0.3)
    at.selectbox(key="ranks_strategy").set_value("energy")
    next(b for b in at.button if b.label == "Fill ranks").click().run()
    assert not at.exception
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
    assert any(spec["data"][0]["type"] == "heatmap" and "Fisher dispersion" in spec["data"][0]["hovertemplate"]
               for spec in plotly_specs(at))
    at.segmented_control(key="heatmap_metric").set_value("risk").run()
    assert not at.exception
    assert any("SVD risk" in spec["data"][0].get("hovertemplate", "") for spec in plotly_specs(at))
    assert at.success or at.warning  # the whole-model verdict


@pytest.mark.parametrize("statistic, label, term", [("taylor", "Taylor loss change", "total"),
                                                     ("output_change", "predicted output change", "second_order")])
def test_spectra_taylor_heatmaps_show_the_library_estimate(env, tiny_bert_dir, sentiment_csv, statistic, label, term):
    import lowrank
    from lowrank.statistics.fisher import svd_loss_change

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


def test_a_new_method_appears_with_widgets_from_its_options(env):
    """A method registered anywhere (here: in the test) is offered on the Factorize and Trade-offs pages,
    with one widget per declared option, and runs with the chosen values."""
    from lowrank.experiments.store import RunStore
    from lowrank.methods import METHODS, Factorization, Option, register_method, truncated_svd

    @register_method("dummy_test", "Plain SVD under another name (a test method).",
                     options={"mode": Option("a", ("a", "b"), "a choice"), "scale": Option(1.0, help="a number"),
                              "steps": Option(None, help="empty: the default")})
    def dummy(W, rank, stats, mode="a", scale=1.0, steps=None):
        return Factorization(*truncated_svd(W, rank), info={"mode": mode, "scale": scale, "steps": steps})

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
        next(b for b in at.button if b.label == "Factorize and evaluate").click().run()
        assert not at.exception, [e.message for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        run = RunStore(env / "runs.sqlite").runs(method="dummy_test", status="done").iloc[0]
        assert run["options"] == {"mode": "b", "scale": 1.0, "steps": 3}

        visit(at, "tradeoffs")
        assert "dummy_test" in [o.split(" ")[0] for o in at.form[0].multiselect[0].options]
    finally:
        METHODS.pop("dummy_test", None)


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
    next(b for b in at.button if b.label == "Factorize and evaluate").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]

    store = RunStore(env / "runs.sqlite")
    runs = store.runs(status="done")
    assert set(runs["method"]) == {"dense", "svd", "tfwsvd"}
    tfwsvd = runs[runs["method"] == "tfwsvd"].iloc[0]
    assert tfwsvd["solver"] == "em" and tfwsvd["strategy"] == "uniform" and tfwsvd["budget"] == pytest.approx(0.5, abs=0.02)
    assert 0 < tfwsvd["kept_fraction"] < 0.55 and tfwsvd["size_bytes"] > 0 and tfwsvd["latency_ms_b1"] > 0
    assert any("weighted error per iteration" in s["layout"]["title"]["text"] for s in plotly_specs(at))  # convergence

    next(b for b in at.button if b.label == "Save svd model").click().run()
    assert not at.exception
    saved = Path(store.runs(method="svd")["output_dir"].iloc[0])
    assert (saved / "lowrank.json").exists() and (saved / "model.safetensors").exists()
    assert any(d.label.startswith("Download") for d in at.download_button)

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

    at = new_app().run()  # a fresh session on the Home page
    next(b for b in at.button if b.label == "Run the demo").click().run()
    assert not at.exception, [e.message for e in at.exception]
    demo = store.sweeps().iloc[0]
    assert demo["label"] == "demo"
    assert at.session_state["plan"].strategy == "fisher_greedy"
    assert wait_for_sweep(store, int(demo["id"]))["status"] == "done"
    at.run()
    assert {"svd", "fwsvd", "dense", "Pareto front"} <= trace_names(at)
    assert any("keeping" in m.value for m in at.markdown)
