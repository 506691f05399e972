"""The dashboard in headless Chromium: a real ``streamlit run`` on the tiny BERT and a CSV task.

Visits every page through the sidebar (one browser session), edits a rank in the table, runs a
tiny factorization, saves the model, and writes screenshots to ``tests/artifacts/``. Needs the
Debian ``chromium`` package (``.ci/run`` installs it); Playwright's own browsers are never
downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboard.serve import CHROMIUM, DashboardServer, launch_chromium, type_into_first_row, wait_idle

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT = 180_000  # ms


@pytest.fixture()
def server(tmp_path, tiny_bert_dir, sentiment_csv):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    env = {"LOWRANK_DEFAULT_MODEL": str(tiny_bert_dir), "LOWRANK_DEFAULT_TASK": str(sentiment_csv),
           "LOWRANK_CACHE": str(tmp_path / "cache"), "LOWRANK_OFFLINE": "1"}
    with DashboardServer(env, log_path=tmp_path / "server.log") as running:
        running.wait_healthy()
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


def metric_value(page, label: str) -> str:
    return metric(page, label).inner_text()


def metric(page, label: str):
    """The value element of the st.metric whose label is exactly ``label``."""
    name = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(f"^{re.escape(label)}$"))
    return page.locator('[data-testid="stMetric"]', has=name).first.locator('[data-testid="stMetricValue"]')


def test_every_page_and_a_tiny_factorization(server):
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
        box = heatmap.locator(".nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.25)
        expect(page.locator(".hoverlayer .hovertext").first).to_contain_text("effective rank", timeout=10_000)
        check_clean(page, "03-spectra")

        go(page, "Ranks", "Ranks")
        editor = page.locator('[data-testid="stDataFrame"]').first
        expect(editor).to_be_visible(timeout=TIMEOUT)
        before = metric_value(page, "Kept parameters")
        type_into_first_row(page, editor, 4, "4")  # layer, block, type, shape, rank
        page.keyboard.press("Enter")
        expect(metric(page, "Kept parameters")).not_to_have_text(before, timeout=30_000)
        wait_idle(page, TIMEOUT)
        check_clean(page, "04-ranks")

        go(page, "Factorize", "Factorize")
        page.get_by_role("button", name=re.compile("Factorize and evaluate")).click()
        page.get_by_role("heading", name="Before and after").wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        page.get_by_role("button", name=re.compile("Save svd model")).click()
        expect(page.get_by_role("button", name=re.compile(r"Download .*svd.*\.zip"))).to_be_visible(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        check_clean(page, "05-factorize")

        go(page, "Trade-offs", "Trade-offs")
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=TIMEOUT)
        legend = chart.locator(".legendtext").all_text_contents()
        assert {"svd", "fwsvd", "Pareto front", "dense"} <= set(legend), legend
        check_clean(page, "06-trade-offs")

        browser.close()
    assert not page_errors, page_errors
