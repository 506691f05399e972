"""Dashboard responsiveness in headless Chromium (system /usr/bin/chromium, as in tests/test_browser.py).

* cold start: from spawning ``streamlit run app.py`` to the Spectra page's two spectrum charts
  being visible, the browser opening ``/Spectra`` directly (target: under 10 s for minilm-rt);
* rank edit: on the Ranks page, typing a new rank into the table until the totals above it show
  the new plan and the app is idle again (target: under 1 s; spectra are cached, not recomputed);
* demo (``--demo``): from clicking "Run the demo" on Home to the trade-off plot with every demo
  run finished (target: under 5 minutes).

Uses the real cache (``~/.cache/lowrank`` or ``LOWRANK_CACHE``): the model, its Fisher information
and the run store; ``--demo`` adds its runs to the store like a user would.
"""

from __future__ import annotations

import statistics
import time

from common import RESULTS, parser, write

from dashboard.serve import DashboardServer, launch_chromium, type_into_first_row, wait_idle

TIMEOUT = 300_000  # ms, per step


def spectra_visible(page) -> None:
    page.locator(".js-plotly-plot").nth(1).wait_for(state="visible", timeout=TIMEOUT)


def metric_value(page, label: str):
    import re

    name = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(f"^{re.escape(label)}$"))
    return page.locator('[data-testid="stMetric"]', has=name).first.locator('[data-testid="stMetricValue"]')


def edit_first_rank(page, rank: int) -> float:
    """Type ``rank`` into the first row's rank cell; seconds until the totals change and the app is idle."""
    from playwright.sync_api import expect

    editor = page.locator('[data-testid="stDataFrame"]').first
    before = metric_value(page, "Kept parameters").inner_text()
    type_into_first_row(page, editor, 4, str(rank))  # layer, block, type, shape, rank
    start = time.perf_counter()
    page.keyboard.press("Enter")
    expect(metric_value(page, "Kept parameters")).not_to_have_text(before, timeout=TIMEOUT)
    wait_idle(page, TIMEOUT)
    return time.perf_counter() - start


def main() -> None:
    from playwright.sync_api import sync_playwright

    from lowrank.models.packaged import minilm_rt_dir

    p = parser(__doc__)
    p.add_argument("--edits", type=int, default=5, help="number of rank edits to time")
    p.add_argument("--demo", action="store_true", help="also time the stakeholder demo (minutes)")
    args = p.parse_args()
    if args.model == "minilm-rt" and not (minilm_rt_dir() / "model.safetensors").exists():
        print("minilm-rt is not built yet: measuring minilm instead")
        args.model = "minilm"
    env = {"LOWRANK_DEFAULT_MODEL": args.model, "LOWRANK_DEFAULT_TASK": args.task}
    rows, extra = [], {}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        with DashboardServer(env, log_path=RESULTS / "dashboard-server.log.tmp") as server:
            health = server.wait_healthy()
            page.goto(f"{server.url}/Spectra", timeout=TIMEOUT)
            spectra_visible(page)
            cold = time.perf_counter() - server.started
            page.locator(".js-plotly-plot").nth(2).wait_for(state="visible", timeout=TIMEOUT)
            heatmap = time.perf_counter() - server.started
            rows.append({"measurement": "server answering health check", "seconds": health, "target_s": None})
            rows.append({"measurement": "cold start -> spectra visible", "seconds": cold, "target_s": 10.0})
            rows.append({"measurement": "cold start -> heatmap visible", "seconds": heatmap, "target_s": None})
            print(f"cold start: spectra visible after {cold:.1f} s, heatmap after {heatmap:.1f} s", flush=True)
            wait_idle(page, TIMEOUT)

            page.locator('[data-testid="stSidebar"] a', has_text="Ranks").first.click()
            page.get_by_role("heading", name="Ranks", exact=True).wait_for(timeout=TIMEOUT)
            wait_idle(page, TIMEOUT)
            edits = []
            for k in range(args.edits):
                edits.append(edit_first_rank(page, 40 + 8 * (k % 2)))
                print(f"rank edit {k + 1}: {edits[-1]:.2f} s", flush=True)
            extra["rank_edit_seconds"] = edits
            rows.append({"measurement": f"rank edit -> totals updated (median of {len(edits)})",
                         "seconds": statistics.median(edits), "target_s": 1.0})
            rows.append({"measurement": "rank edit -> totals updated (max)", "seconds": max(edits), "target_s": 1.0})

            if args.demo:
                page.locator('[data-testid="stSidebar"] a', has_text="Home").first.click()
                page.get_by_role("button", name="Run the demo").wait_for(timeout=TIMEOUT)
                wait_idle(page, TIMEOUT)
                start = time.perf_counter()
                page.get_by_role("button", name="Run the demo").click()
                page.get_by_text("keeping 70%", exact=False).wait_for(timeout=TIMEOUT)
                page.locator('[data-testid="stAlertContentSuccess"]', has_text="Sweep").first.wait_for(timeout=TIMEOUT)
                rows.append({"measurement": "stakeholder demo (click -> final trade-off plot)",
                             "seconds": time.perf_counter() - start, "target_s": 300.0})
        browser.close()
    write("dashboard", args, rows, extra)


if __name__ == "__main__":
    main()
