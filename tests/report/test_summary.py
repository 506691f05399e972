"""The result story (lowrank.report: summary, HTML export, ``lowrank report``) and the dashboard's readability:
the Summary page shows the stored runs' values, small predicted losses never render as zero, each page says
what to do next, convergence plots are summarised."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dashboard import layout
from lowrank.evaluation.perplexity import protocol_text
from lowrank.experiments.store import RunStore
from lowrank.report import drop_checks, is_report, render_html, summary, summary_figure, with_drop_checks, write_report

ROOT = Path(__file__).resolve().parents[2]
LATENCY = {
    "b1": {"warm_up": True, "repeats": 5},
    "b32": {"warm_up": True, "repeats": 3},
    "conditions": {"threads": 1, "load": 1.5},
}


def add_run(
    store: RunStore,
    model: str,
    task: str,
    method: str,
    value: float,
    budget=None,
    metric="accuracy",
    size=None,
    b1=None,
    b32=None,
    eval_limit=None,
    **extra,
) -> int:
    run_id = store.start_run(
        model=model,
        task=task,
        split="validation",
        eval_limit=eval_limit,
        method=method,
        budget=budget,
        strategy=None if method == "dense" else "uniform",
        **extra,
    )
    store.finish_run(
        run_id,
        metric=metric,
        value=value,
        size_bytes=size,
        latency_ms_b1=b1,
        latency_ms_b32=b32,
        latency_info=LATENCY,
        params_linear=int(1000 * (budget or 1.0)),
        kept_fraction=budget,
    )
    return run_id


def seed(store: RunStore, model: str, task: str) -> dict:
    """A dense run, svd and fwsvd at three budgets, and runs that must not count (other limit, failed)."""
    ids = {"dense": add_run(store, model, task, "dense", 0.85, size=40_000_000, b1=10.0, b32=120.0)}
    for budget, svd, fwsvd in ((0.3, 0.55, 0.70), (0.5, 0.70, 0.80), (0.7, 0.84, 0.83)):
        ids[("svd", budget)] = add_run(
            store, model, task, "svd", svd, budget, size=int(40e6 * budget), b1=8.0 * budget + 2, b32=100.0 * budget
        )
        ids[("fwsvd", budget)] = add_run(
            store,
            model,
            task,
            "fwsvd",
            fwsvd,
            budget,
            size=int(40e6 * budget) + 1000,
            b1=8.0 * budget + 3,
            b32=100.0 * budget + 1,
        )
    add_run(store, model, task, "fwsvd", 0.99, 0.5, eval_limit=2)  # another evaluation limit: not comparable
    failed = store.start_run(model=model, task=task, split="validation", method="fwsvd", budget=0.5)
    store.fail_run(failed, "boom")
    add_run(store, "other-model", task, "fwsvd", 0.95, 0.5)
    return ids


def test_summary_best_method_per_budget_against_dense_and_svd(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    ids = seed(store, "m", "t")
    s = summary(store, "m", "t")
    assert [(r.budget, r.method, r.value, r.svd_value) for r in s.rows] == [
        (0.3, "fwsvd", 0.70, 0.55),
        (0.5, "fwsvd", 0.80, 0.70),
        (0.7, "svd", 0.84, 0.84),
    ]
    head = s.headline
    assert head.budget == 0.5 and head.run_id == ids[("fwsvd", 0.5)]
    assert (head.size_bytes, head.latency_ms_b1, head.latency_ms_b32) == (20_001_000, 7.0, 51.0)
    assert "1 thread" in head.latency_note
    # dense 0.85, plain SVD 0.70 (loses 15 points), fwsvd 0.80 (keeps 10 of them)
    assert "keeps 10.0 of the 15.0 points that plain SVD loses" in s.headlines[0]
    assert "20.0 MB on disk against 40.0 MB dense (50%)" in s.headlines[1]
    assert "7.0 ms at batch 1 and 51.0 ms at batch 32" in s.headlines[1] and "1 thread" in s.headlines[1]
    assert set(s.runs["method"]) == {"dense", "svd", "fwsvd"} and len(s.runs) == 7


def test_summary_of_perplexity_prefers_lower(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    add_run(store, "lm", "lee", "dense", 20.0, metric="perplexity", size=10)
    add_run(store, "lm", "lee", "svd", 40.0, 0.5, metric="perplexity", size=5)
    add_run(store, "lm", "lee", "fwsvd", 25.0, 0.5, metric="perplexity", size=5)
    s = summary(store, "lm", "lee")
    assert s.headline.method == "fwsvd" and s.headline.svd_value == 40.0
    assert "keeps 15.0 of the 20.0 perplexity points that plain SVD adds" in s.headlines[0]
    assert summary(store, "lm", "nothing").empty


def test_the_summary_compares_and_names_one_perplexity_protocol(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    windows, documents = protocol_text("windows", 2048), protocol_text("per-document", 2048)
    add_run(store, "lm", "lee", "dense", 20.0, metric="perplexity", protocol=windows)
    add_run(store, "lm", "lee", "svd", 40.0, 0.5, metric="perplexity", protocol=windows)
    add_run(store, "lm", "lee", "fwsvd", 25.0, 0.5, metric="perplexity", protocol=documents)  # measured otherwise
    s = summary(store, "lm", "lee")
    assert [(r.method, r.value) for r in s.rows] == [("svd", 40.0)] and s.protocol == windows
    assert f"whole split; {windows}" in render_html(s, [summary_figure(s)])


def test_a_destroyed_result_is_flagged_in_the_summary_and_the_report(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    add_run(store, "lm", "lee", "dense", 20.0, metric="perplexity", size=10, b1=10.0, b32=100.0)
    add_run(store, "lm", "lee", "svd", 900.0, 0.5, metric="perplexity", size=5, b1=9.0, b32=90.0)
    add_run(store, "lm", "lee", "kfac_svd", 30.0, 0.5, metric="perplexity", size=5, b1=12.0, b32=80.0)
    s = summary(store, "lm", "lee")
    row = s.headline
    assert row.method == "kfac_svd" and row.destroyed is None and "more than 10x" in row.svd_destroyed
    assert row.warning.startswith("svd: perplexity 900")
    assert any(line.startswith("Plain SVD destroys the model at 50%") for line in s.headlines)
    # slower than dense at batch 1 only, with half the multiply-adds: said, and why
    (slower,) = [line for line in s.headlines if "reads slower than dense" in line]
    assert "at batch 1 although it does 50% of the dense multiply-adds" in slower and "batch 32" not in slower
    assert s.table()["destroys the model?"].iloc[0] == row.warning
    assert "svd: perplexity 900" in render_html(s, [summary_figure(s)])
    store = RunStore(tmp_path / "worse.sqlite")
    add_run(store, "lm", "lee", "dense", 20.0, metric="perplexity")
    add_run(store, "lm", "lee", "svd", 900.0, 0.5, metric="perplexity")
    only = summary(store, "lm", "lee")
    assert only.headline.destroyed and only.headline.warning.count("perplexity 900") == 1
    assert any(line.startswith("Warning: even the best stored method destroys the model") for line in only.headlines)


def seed_svd_with_ranks(store: RunStore, model: str, task: str, ranks: dict) -> tuple[int, int]:
    """A dense run (loss 0.40) and a plain-SVD run at 50% with ``ranks`` (loss 0.90): ids."""
    dense = add_run(store, model, task, "dense", 0.85, size=10)
    store.update_run(dense, loss=0.40)
    svd = add_run(store, model, task, "svd", 0.60, 0.5, size=5, ranks=ranks)
    store.update_run(svd, loss=0.90)
    return dense, svd


def test_drop_checks_predict_at_each_runs_ranks_beside_what_it_measured(tmp_path):
    import torch

    from lowrank.analysis.metrics import risk_summary, risk_table

    torch.manual_seed(0)
    weights = {"a": torch.randn(12, 8), "b": torch.randn(6, 10)}
    fishers = {name: torch.rand_like(w) ** 4 for name, w in weights.items()}
    ranks = {"a": 3, "b": 2}
    store = RunStore(tmp_path / "runs.sqlite")
    _, svd = seed_svd_with_ranks(store, "m", "t", ranks)
    s = summary(store, "m", "t")
    (check,) = drop_checks(s, weights, fishers)
    expected = risk_summary(risk_table(weights, fishers, ranks))
    assert check.run_id == svd and check.budget == 0.5
    assert (
        check.predicted_loss_increase == pytest.approx(expected["total_loss_svd"]) and check.predicted_loss_increase > 0
    )
    assert check.expected_to_drop == expected["svd_expected_to_drop"]
    assert check.measured_loss_increase == pytest.approx(0.50) and check.measured_change == pytest.approx(-0.25)
    checked = with_drop_checks(s, [check])
    assert any("SVD-drop metric predicts" in line and "+0.5 nats" in line for line in checked.headlines)
    page = render_html(checked, [summary_figure(checked)])
    assert "The SVD-drop metric: predicted and measured" in page and f"{check.predicted_loss_increase:.4g}" in page


def values(data) -> np.ndarray:
    """A plotly array as written to HTML: a list, or a typed array (``{"dtype", "bdata"}``, base64)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
    return np.asarray(data, dtype=float)


def test_report_html_is_standalone_with_the_figure_data(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    seed(store, "m<b>", "t")
    s = summary(store, "m<b>", "t")
    page = render_html(s, [summary_figure(s), summary_figure(s)])
    assert not re.search(r"<script[^>]+src=[\"']?https?:", page)  # plotly.js is inline: opens offline
    assert page.count("Plotly.newPlot") == 2 and len(page) > 1_000_000  # the library once, both charts
    assert "m&lt;b&gt;" in page and "m<b>" not in page  # names are escaped
    figures = [json.loads(m) for m in re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page)]
    traces = {trace["name"]: trace for trace in figures[0]}
    assert set(traces) == {"svd", "fwsvd", "dense"}
    assert np.allclose(sorted(values(traces["fwsvd"]["y"])), [0.70, 0.80, 0.83])
    for words in ("keeps 10.0 of the 15.0 points", "Runs compared", "transformers", "python", "uniform", "whole split"):
        assert words in page


def test_write_report_replaces_only_its_own_file(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    seed(store, "m", "t")
    s = summary(store, "m", "t")
    out = tmp_path / "report.html"
    write_report(s, out)
    assert is_report(out.read_bytes())
    write_report(s, out)  # ours: replaced
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my notes</html>")
    with pytest.raises(ValueError, match="not written by lowrank"):
        write_report(s, mine)
    assert mine.read_text() == "<html>my notes</html>"


def test_cli_report(tmp_path, capsys):
    from lowrank.cli.main import main

    path = tmp_path / "runs.sqlite"
    seed(RunStore(path), "m", "t")
    out = tmp_path / "r.html"
    assert main(["report", "--model", "m", "--store", str(path), "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "t" and data["out"] == str(out) and is_report(out.read_bytes())
    assert [row["best method"] for row in data["rows"]] == ["fwsvd", "fwsvd", "svd"]
    mine = tmp_path / "mine.html"
    mine.write_text("mine")
    assert main(["report", "--model", "m", "--task", "t", "--store", str(path), "--out", str(mine)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and mine.read_text() == "mine"
    assert main(["report", "--model", "absent", "--store", str(path)]) == 2


def test_cli_report_predict_adds_the_drop_metric(
    tmp_path, capsys, monkeypatch, tiny_bert, tiny_bert_dir, sentiment_csv
):
    from lowrank import compressible_linears
    from lowrank.cli.main import main

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    ranks = {name: 2 for name in list(compressible_linears(tiny_bert.model))[:2]}
    path = tmp_path / "runs.sqlite"
    _, svd = seed_svd_with_ranks(RunStore(path), str(tiny_bert_dir), str(sentiment_csv), ranks)
    args = ["report", "--model", str(tiny_bert_dir), "--task", str(sentiment_csv), "--store", str(path), "--json"]
    assert main(args + ["--predict", "--fisher-batches", "2"]) == 0
    (check,) = json.loads(capsys.readouterr().out)["drop_checks"]
    assert check["run"] == svd and check["predicted loss increase (nats)"] > 0
    assert check["measured loss increase (nats)"] == pytest.approx(0.5)
    assert main(args) == 0 and "drop_checks" not in json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the dashboard


@pytest.fixture()
def env(monkeypatch, tmp_path, tiny_bert_dir, sentiment_csv):
    import streamlit as st
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_bert_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(sentiment_csv))
    monkeypatch.setenv("LOWRANK_CACHE", str(cache))
    st.cache_data.clear()
    st.cache_resource.clear()
    return cache


def app(key: str):
    """The app, on the page ``key`` of the page table."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page(layout.page(key).script).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_summary_page_shows_the_stored_values(env, tiny_bert_dir, sentiment_csv):
    store = RunStore(env / "runs.sqlite")
    seed(store, str(tiny_bert_dir), str(sentiment_csv))
    at = app("summary")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {
        "fwsvd accuracy at 50%": "0.800",
        "size on disk": "20.0 MB",
        "latency, batch 1": "7.0 ms",
        "latency, batch 32": "51.0 ms",
    }
    assert any("keeps 10.0 of the 15.0 points that plain SVD loses" in m.value for m in at.markdown)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in spec["data"]} == {"svd", "fwsvd", "dense"}
    table = at.dataframe[0].value
    assert list(table["best method"]) == ["fwsvd", "fwsvd", "svd"] and list(table["accuracy"]) == [0.70, 0.80, 0.84]
    assert any(b.label == "Export the report (HTML)" for b in at.get("download_button"))


def test_summary_page_shows_the_drop_metric_once_the_fisher_is_computed(env, tiny_bert, tiny_bert_dir, sentiment_csv):
    from lowrank import compressible_linears
    from lowrank.analysis.metrics import risk_summary, risk_table
    from lowrank.statistics import DEFAULT, select, statistics_for

    linears = dict(list(compressible_linears(tiny_bert.model).items())[:3])
    ranks = {name: 2 for name in linears}
    _, svd = seed_svd_with_ranks(RunStore(env / "runs.sqlite"), str(tiny_bert_dir), str(sentiment_csv), ranks)
    at = app("summary")
    assert any("The metric needs" in i.value for i in at.info)  # no Fisher on disk yet: nothing computed
    next(b for b in at.button if b.label.startswith("Compute ")).click().run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[-1].value
    fishers = select(statistics_for(tiny_bert, sentiment_csv, ("fisher",), DEFAULT), "fisher")
    weights = {name: module.weight for name, module in linears.items()}
    expected = risk_summary(risk_table(weights, fishers, ranks))["total_loss_svd"]
    assert list(table["run"]) == [svd]
    assert table["predicted loss increase (nats)"].iloc[0] == pytest.approx(expected, rel=1e-4)
    assert table["measured loss increase (nats)"].iloc[0] == pytest.approx(0.50)
    assert any("SVD-drop metric predicts" in m.value for m in at.markdown)


def test_summary_page_flags_a_result_at_chance(env, tiny_bert_dir, sentiment_csv):
    from lowrank.evaluation.quality import chance_accuracy

    store = RunStore(env / "runs.sqlite")
    seed(store, str(tiny_bert_dir), str(sentiment_csv))
    add_run(store, str(tiny_bert_dir), str(sentiment_csv), "svd", chance_accuracy(str(sentiment_csv)), 0.2)
    at = app("summary")
    (warning,) = [w.value for w in at.warning if "Destroyed models" in w.value]
    assert "at 20%, svd: accuracy" in warning and "at chance" in warning
    table = at.dataframe[0].value
    assert list(table["destroys the model?"] != "") == [True, False, False, False]


def test_summary_page_without_runs_says_what_to_do(env):
    at = app("summary")
    assert any("No finished compressed runs" in i.value for i in at.info)


def test_every_page_says_what_to_do_next(env):
    at = app("factorize")
    assert any(layout.page("factorize").next in c.value for c in at.caption)
    assert all(entry.next for entry in layout.PAGES) and layout.PAGES[-1].script == "pages/Summary.py"


def test_small_predicted_losses_render_non_zero(env):
    from lowrank.report.formats import SMALL_NUMBER_FORMAT, format_small

    assert (
        format_small(3.2e-7, "nats") == "3.20e-07 nats" and format_small(0.0412) == "0.0412" and format_small(0) == "0"
    )
    at = app("ranks")
    next(b for b in at.button if b.label.startswith("Compute ")).click().run()
    assert not at.exception
    frame = at.data_editor[0].value
    factorized = frame[frame["rank"] != ""]["predicted_loss"]
    assert len(factorized) and (factorized > 0).all()
    columns = json.loads(at.data_editor[0].proto.columns)
    assert columns["predicted_loss"]["type_config"]["format"] == SMALL_NUMBER_FORMAT, columns["predicted_loss"]
    assert all((SMALL_NUMBER_FORMAT % v) != "0.00e+00" for v in factorized)
    shown = next(m.value for m in at.metric if m.label == "Predicted loss increase")
    assert shown.endswith(" nats") and float(shown.split()[0]) > 0


def test_convergence_of_many_layers_is_summarised():
    from dashboard.plots import CONVERGENCE_WORST, convergence_figure

    history = {f"layer{i}": list(np.geomspace(1.0, 0.01 * (i + 1), 4 + i % 3)) for i in range(36)}
    fig = convergence_figure(history, "als")
    names = [trace.name for trace in fig.data]
    assert len(fig.data) == 3 + CONVERGENCE_WORST and "median of 36 layers" in names
    assert names[3:] == [f"layer{i}" for i in range(35, 30, -1)]  # the highest final errors, by name
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    small = convergence_figure({"a": [2.0, 1.0]}, "als")
    assert [t.name for t in small.data] == ["a"]


# ---------------------------------------------------------------- an untrained classification head


def test_head_untrained_is_an_encoder_on_a_classification_task():
    from lowrank.models.labels import head_untrained

    assert head_untrained("encoder", "classification")
    assert not head_untrained("classifier", "classification") and not head_untrained("causal-lm", "lm")


def test_untrained_head_is_labelled_where_its_accuracy_appears(env, monkeypatch, tiny_encoder_dir, sentiment_csv):
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_encoder_dir))
    at = app("model")
    assert any(m.label == "Accuracy (untrained head)" for m in at.metric)
    assert any("no trained classification head" in w.value and "lowrank finetune" in w.value for w in at.warning)
    at.switch_page(layout.page("home").script).run()
    assert any("accuracy (untrained head)" in m.value for m in at.markdown)


def test_a_trained_classifier_is_not_labelled(env):
    at = app("model")
    assert any(m.label == "Accuracy" for m in at.metric)
    assert not any("classification head" in w.value for w in at.warning)
