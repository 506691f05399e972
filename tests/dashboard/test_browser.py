"""The dashboard in headless Chromium: a real ``streamlit run`` on the tiny BERT and a CSV task.

Visits every page through the sidebar (one browser session), edits a rank in the table, runs a
tiny factorization (in the background), downloads nothing but checks the download is offered, and
writes screenshots to ``tests/artifacts/``; then the decoder path: a tiny Llama chosen on Model &
task (the task follows: Lee), through Spectra, Ranks and Factorize (with generations side by side) to the trade-off
plot and the decoder demo on Home, with no error box on the way; the new views (why this rank, predicted against
measured) get their own screenshots. A second test starts the server on a fresh cache, as a first ``make run`` does: it answers
within 60 s while the default model builds in the background (the build made a few steps of the tiny encoder by
``LOWRANK_FINETUNE_RECIPE``), Home shows the build's progress, then the stakeholder demo runs on the built model and
the Summary renders. Needs the Debian ``chromium`` package (``.ci/run`` installs it); Playwright's
own browsers are never downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dashboard.serve import CHROMIUM, DashboardServer, launch_chromium, type_into_first_row, wait_idle

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT = 180_000  # ms


@pytest.fixture()
def server(tmp_path, tiny_bert_dir, sentiment_csv, seed_lee, tiny_llama_dir):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    seed_lee(tmp_path / "cache")  # the decoder path measures perplexity on Lee, offline
    env = {
        "LOWRANK_DEFAULT_MODEL": str(tiny_bert_dir),
        "LOWRANK_DEFAULT_TASK": str(sentiment_csv),
        "LOWRANK_CACHE": str(tmp_path / "cache"),
        "LOWRANK_OFFLINE": "1",
        "LOWRANK_MODEL_ROOTS": str(tiny_bert_dir.parent),  # the test models may be typed in the model box
        "LOWRANK_DEMO_DECODER": str(tiny_llama_dir),  # the decoder demo on the tiny Llama
    }
    with DashboardServer(env, log_path=tmp_path / "server.log") as running:
        running.wait_healthy()
        yield running


@pytest.fixture()
def first_run_server(tmp_path, tiny_encoder_dir, sentiment_csv):
    """A fresh cache and no LOWRANK_DEFAULT_MODEL: the default model (minilm-rt) is not built."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    recipe = {
        "base": str(tiny_encoder_dir),
        "task": str(sentiment_csv),
        "config": {"max_steps": 40, "batch_size": 4, "max_length": 16},
    }
    env = {
        "LOWRANK_DEFAULT_TASK": str(sentiment_csv),
        "LOWRANK_CACHE": str(tmp_path / "cache"),
        "LOWRANK_OFFLINE": "1",
        "LOWRANK_FINETUNE_RECIPE": json.dumps(recipe),
    }
    with DashboardServer(env, log_path=tmp_path / "server.log") as running:
        running.health_s = running.wait_healthy(timeout=120)
        yield running


def go(page, label: str, title: str) -> None:
    """Open a page through the sidebar link and wait until its script has finished."""
    page.locator('[data-testid="stSidebar"] a', has_text=label).first.click()
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=TIMEOUT)
    wait_idle(page, TIMEOUT)


def check_clean(page, name: str) -> None:
    """Screenshot the whole page (the viewport grows to the content: Streamlit scrolls inside its main
    container, not the document) and check no exception is shown."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(500)  # charts re-layout to the new size
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)
    assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: an exception is shown"


def no_error_box(page, where: str) -> None:
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: {errors.all_inner_texts()}"


def metric_value(page, label: str) -> str:
    return metric(page, label).inner_text()


def metric(page, label: str):
    """The value element of the st.metric whose label is exactly ``label``."""
    name = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(f"^{re.escape(label)}$"))
    return page.locator('[data-testid="stMetric"]', has=name).first.locator('[data-testid="stMetricValue"]')


def test_every_page_a_tiny_factorization_and_the_decoder_path(server, tiny_llama_dir):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page_errors = []
        page.on("pageerror", lambda err: page_errors.append(str(err)))

        page.goto(server.url, timeout=TIMEOUT)
        page.get_by_role("heading", name="lowrank-studio", exact=True).wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        expect(page.get_by_role("button", name=re.compile("Run the demo"))).to_be_visible()
        check_clean(page, "01-home")

        go(page, "Model & task", "Model & task")
        page.get_by_text("Dense model quality").wait_for(timeout=TIMEOUT)
        assert metric_value(page, "Compressible layers") == "12"
        assert re.fullmatch(r"0\.\d{3}", metric_value(page, "Accuracy"))
        check_clean(page, "02-model-and-task")

        go(page, "Spectra", "Spectra")
        charts = page.locator(".js-plotly-plot")
        expect(charts).to_have_count(3, timeout=TIMEOUT)
        heatmap = charts.nth(2)
        heatmap.scroll_into_view_if_needed()  # below the fold of a 1000-pixel window: the mouse cannot reach it there
        box = heatmap.locator(".nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.25)
        expect(page.locator(".hoverlayer .hovertext").first).to_contain_text("effective rank", timeout=10_000)
        check_clean(page, "03-spectra")
        page.get_by_role("button", name=re.compile("Measure each layer alone")).click()
        page.get_by_text(re.compile(r"Spearman ρ = [+-]\d\.\d\d over \d+ layers")).first.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        check_clean(page, "03b-spectra-predicted-vs-measured")

        go(page, "Ranks", "Ranks")
        editor = page.locator('[data-testid="stDataFrame"]').first
        expect(editor).to_be_visible(timeout=TIMEOUT)
        before = metric_value(page, "Kept parameters")
        type_into_first_row(page, editor, 4, "4")  # layer, block, type, shape, rank
        page.keyboard.press("Enter")
        expect(metric(page, "Kept parameters")).not_to_have_text(before, timeout=30_000)
        wait_idle(page, TIMEOUT)
        check_clean(page, "04-ranks")
        page.get_by_role("button", name=re.compile("Compute input activation statistics")).click()
        page.get_by_text(re.compile("what uniform ignores")).first.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        no_error_box(page, "ranks: why this rank")
        check_clean(page, "04b-ranks-why-this-rank")

        go(page, "Factorize", "Factorize")
        page.get_by_role("button", name=re.compile("Factorize and evaluate")).click()
        page.get_by_role("heading", name="Before and after").wait_for(timeout=TIMEOUT)  # the background run is done
        wait_idle(page, TIMEOUT)
        no_error_box(page, "factorize")
        expect(page.get_by_role("button", name=re.compile(r"Download .*-svd-run\d+\.zip"))).to_be_visible(
            timeout=TIMEOUT
        )
        check_clean(page, "05-factorize")

        go(page, "Trade-offs", "Trade-offs")
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=TIMEOUT)
        legend = chart.locator(".legendtext").all_text_contents()
        assert {"svd", "kfac_svd", "Pareto front", "dense"} <= set(legend), legend
        check_clean(page, "06-trade-offs")

        # the decoder path: a causal LM, chosen by folder; the task follows it
        go(page, "Model & task", "Model & task")
        page.get_by_text("Hugging Face id or local folder", exact=True).first.click()
        box = page.get_by_role("textbox", name="Hugging Face id or local folder")
        box.wait_for(timeout=TIMEOUT)
        box.fill(str(tiny_llama_dir))
        page.get_by_role("button", name=re.compile("Load model")).click()
        metric(page, "Perplexity").wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        expect(page.get_by_text(re.compile("the task is now Lee"))).to_be_visible()
        no_error_box(page, "model & task (decoder)")
        check_clean(page, "07-decoder-model-and-task")

        go(page, "Spectra", "Spectra")
        expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=TIMEOUT)
        no_error_box(page, "spectra (decoder)")
        go(page, "Ranks", "Ranks")
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible(timeout=TIMEOUT)
        no_error_box(page, "ranks (decoder)")
        go(page, "Factorize", "Factorize")
        page.get_by_role("button", name=re.compile("Factorize and evaluate")).click()
        page.get_by_role("heading", name="Before and after").wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        no_error_box(page, "factorize (decoder)")
        expect(metric(page, "dense perplexity")).to_be_visible()
        check_clean(page, "08-decoder-factorize")
        page.get_by_role("button", name=re.compile("Generate side by side")).click()
        page.get_by_text(re.compile("Greedy decoding")).first.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        no_error_box(page, "factorize: generations (decoder)")
        check_clean(page, "08b-decoder-generations")
        go(page, "Trade-offs", "Trade-offs")
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=TIMEOUT)
        legend = chart.locator(".legendtext").all_text_contents()
        assert {"svd", "kfac_svd_compensated", "dense"} <= set(legend), legend  # the default form on a decoder
        no_error_box(page, "trade-offs (decoder)")
        check_clean(page, "09-decoder-trade-offs")

        go(page, "Home", "lowrank-studio")  # the decoder demo, on the tiny Llama
        page.get_by_role("button", name=re.compile("Run the decoder demo")).click()
        page.get_by_text(re.compile("Greedy decoding")).first.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        no_error_box(page, "decoder demo")
        check_clean(page, "09b-decoder-demo")

        browser.close()
    assert not page_errors, page_errors


def test_first_run_serves_at_once_builds_in_the_background_then_the_demo_and_summary(first_run_server):
    from playwright.sync_api import expect, sync_playwright

    assert first_run_server.health_s < 60
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page_errors = []
        page.on("pageerror", lambda err: page_errors.append(str(err)))
        page.goto(first_run_server.url, timeout=TIMEOUT)
        page.get_by_role("heading", name="lowrank-studio", exact=True).wait_for(timeout=TIMEOUT)
        expect(page.locator('[data-testid="stProgress"]').first).to_be_visible(timeout=TIMEOUT)  # the build's card
        expect(page.get_by_role("button", name=re.compile("Run the demo"))).to_be_disabled()
        check_clean(page, "10-first-run-building")

        use = page.get_by_role("button", name=re.compile("^Use "))
        use.wait_for(timeout=TIMEOUT)  # built: the card offers the model
        use.click()
        wait_idle(page, TIMEOUT)
        demo = page.get_by_role("button", name=re.compile("Run the demo"))
        expect(demo).to_be_enabled(timeout=TIMEOUT)
        demo.click()
        page.get_by_text(re.compile("keeping 70% of the compressible parameters")).wait_for(timeout=TIMEOUT)
        page.get_by_text(re.compile("Sweep .*done|done", re.IGNORECASE)).first.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        no_error_box(page, "demo")
        check_clean(page, "11-first-run-demo")

        go(page, "Summary", "Summary")
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=TIMEOUT)
        expect(page.get_by_role("button", name=re.compile("Export the report"))).to_be_visible()
        no_error_box(page, "summary")
        check_clean(page, "12-first-run-summary")
        browser.close()
    assert not page_errors, page_errors
