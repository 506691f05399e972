"""Dashboard responsiveness in headless Chromium (system /usr/bin/chromium, as in tests/dashboard/test_browser.py),
and the decoder path's dense evaluation.

* cold Spectra (``--cold-starts``, default 5, median): from spawning the server (``python -m dashboard.launch``, a fresh
  server each time) to the Spectra page's two spectrum charts being visible, the browser opening
  ``/Spectra`` directly (target: under 10 s for minilm-rt). The spectra come from the disk cache
  (``<cache>/spectra/``) when an earlier visit computed them; the first start reports whether it did;
* rank edit (``--edits``, default 5, median): on the Ranks page, typing a new rank into the table until
  the totals above it show the new plan and the app is idle again (target: under 1 s);
* first run (``--first-runs``, default 1): what a first ``make run`` on a machine with the venv meets: a server
  (``python -m dashboard.launch``) on an empty cache (a temporary ``LOWRANK_CACHE``) until Home shows the
  background build of the default model (target: under 60 s); the build it started is then stopped (SIGTERM
  to its worker) and the temporary cache removed;
* decoder dense evaluation (``--decoder-model``, default smollm2-135m, on ``--decoder-task`` lee): what
  the Model & task page does for a causal LM: perplexity on the validation split, then the latencies
  within their time budget (``lowrank.evaluation.latency.LATENCY_BUDGET_S`` per batch size), reported with their
  repeats and conditions; ``--no-decoder`` skips it;
* demo (``--demo``): from clicking "Run the demo" on Home to the trade-off plot with every demo run
  finished (target: under 5 minutes);
* cold Spectra under the K-FAC metric (``--kfac-spectra MODEL:TASK ...``, default minilm-rt:rotten_tomatoes and
  smollm2-135m:lee; ``--no-kfac-spectra`` skips it): the K-FAC statistics computed first (untimed, cached on disk
  like a user's earlier visit), then from spawning a fresh server to the Spectra page showing the singular values of
  ``L_G^T W L_A`` after choosing the K-FAC metric (targets: 10 s on minilm-rt, 30 s on smollm2-135m), and to the
  whole page (the heatmaps under K-FAC, the app idle); ``--kfac-first-visit`` removes the spectra under K-FAC from
  the disk cache first, so the page computes them (the chosen layers, then every layer);
* decoder demo (``--decoder-demo``): from clicking "Run the decoder demo" on Home to its generations side by side
  (``LOWRANK_DEMO_DECODER``, default smollm2-135m; target: under 10 minutes on 2 CPU cores).

Uses the real cache (``~/.cache/lowrank`` or ``LOWRANK_CACHE``): the model, its Fisher information,
the spectra and the run store; ``--demo`` adds its runs to the store like a user would. The decoder
evaluation writes nothing to the run store.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, parser, write

# This script is named like the dashboard package; put the repository first so ``dashboard`` is the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.modules.pop("dashboard", None)

from dashboard.serve import DashboardServer, launch_chromium, type_into_first_row, wait_idle  # noqa: E402
from lowrank.experiments.store import RunStore  # noqa: E402

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


def cold_spectra(browser, env: dict, log) -> tuple[float, float, float]:
    """One fresh server: (health check, spectra visible, heatmap visible), seconds since spawn."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    with DashboardServer(env, log_path=log) as server:
        health = server.wait_healthy()
        page.goto(f"{server.url}/Spectra", timeout=TIMEOUT)
        spectra_visible(page)
        cold = time.perf_counter() - server.started
        page.locator(".js-plotly-plot").nth(2).wait_for(state="visible", timeout=TIMEOUT)
        heatmap = time.perf_counter() - server.started
        wait_idle(page, TIMEOUT)
    page.close()
    return health, cold, heatmap


KFAC_TARGETS_S = {"minilm-rt": 10.0, "smollm2-135m": 30.0}
KFAC_LABEL = "K-FAC: L_G^T W L_A (kfac_svd)"  # dashboard.names.spectrum_metric_label("kfac_svd")


def kfac_statistics(model: str, task: str) -> float:
    """Seconds to make sure the K-FAC moments of ``model`` on ``task`` (the default sample) are on disk."""
    import lowrank
    from lowrank.methods import get_method
    from lowrank.statistics import DEFAULT

    start = time.perf_counter()
    lowrank.statistics_for(lowrank.load_model(model, task=task), task, get_method("kfac_svd").needs, DEFAULT)
    return time.perf_counter() - start


def cold_kfac_spectra(browser, model: str, task: str, log) -> tuple[float, float]:
    """One fresh server on ``model``: seconds from spawn to the Spectra page's charts under the K-FAC metric, and to
    the whole page (heatmaps under K-FAC included, the app idle)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    with DashboardServer({"LOWRANK_DEFAULT_MODEL": model, "LOWRANK_DEFAULT_TASK": task}, log_path=log) as server:
        server.wait_healthy()
        page.goto(f"{server.url}/Spectra", timeout=TIMEOUT)
        spectra_visible(page)
        page.get_by_text(KFAC_LABEL, exact=True).first.click()
        page.get_by_text("Singular values of K-FAC", exact=False).first.wait_for(state="visible", timeout=TIMEOUT)
        spectra_visible(page)
        charts = time.perf_counter() - server.started
        wait_idle(page, TIMEOUT)
        complete = time.perf_counter() - server.started
    page.close()
    return charts, complete


def decoder_demo(browser, env: dict, log) -> float:
    """Seconds from clicking "Run the decoder demo" on Home to its generations side by side."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    with DashboardServer(env, log_path=log) as server:
        server.wait_healthy()
        page.goto(server.url, timeout=TIMEOUT)
        button = page.get_by_role("button", name="Run the decoder demo")
        button.wait_for(timeout=TIMEOUT)
        wait_idle(page, TIMEOUT)
        start = time.perf_counter()
        button.click()
        done = page.get_by_text("Greedy decoding", exact=False).first  # also the caption of an earlier demo's table
        done.wait_for(state="detached", timeout=TIMEOUT)  # gone while the new demo runs
        done.wait_for(state="visible", timeout=15 * 60_000)
        seconds = time.perf_counter() - start
    page.close()
    return seconds


def first_run(browser, log) -> float:
    """A server on an empty cache: seconds from spawn to Home showing the default model's build; then the build
    is stopped and the cache removed."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    with tempfile.TemporaryDirectory(prefix="first-run-") as cache:
        env = {"LOWRANK_CACHE": cache, "LOWRANK_DEFAULT_MODEL": "", "LOWRANK_DEFAULT_TASK": ""}
        try:
            with DashboardServer(env, log_path=log) as server:
                server.wait_healthy()
                page.goto(server.url, timeout=TIMEOUT)
                page.locator('[data-testid="stProgress"]').first.wait_for(state="visible", timeout=TIMEOUT)
                seconds = time.perf_counter() - server.started
        finally:
            for build in RunStore(Path(cache) / "runs.sqlite").builds(status="running"):
                if build.get("pid"):
                    os.kill(int(build["pid"]), signal.SIGTERM)
            time.sleep(2)  # the worker ends its row and removes its half-written folder
    page.close()
    return seconds


def decoder_evaluation(model: str, task: str, limit) -> dict:
    """Seconds of the dense evaluation of a causal LM (quality, then latency), with what was measured."""
    import lowrank
    from lowrank.evaluation.latency import latency_note

    start = time.perf_counter()
    loaded = lowrank.load_model(model, task=task)
    loaded_s = time.perf_counter() - start
    marks = {}

    def progress(done: int, total: int, message: str = "") -> None:
        if message.startswith("measuring latency") and "latency" not in marks:
            marks["latency"] = time.perf_counter()

    start = time.perf_counter()
    result = lowrank.evaluate(loaded, task, limit=limit, progress=progress)
    end = time.perf_counter()
    latency_start = marks.get("latency", end)
    return {
        "load_s": loaded_s,
        "evaluation_s": end - start,
        "quality_s": latency_start - start,
        "latency_s": end - latency_start,
        "perplexity": result.value,
        "latency_ms_b1": result.latency_ms_b1,
        "latency_ms_b32": result.latency_ms_b32,
        "latency": result.latency,
        "note": latency_note(result.latency),
    }


def main() -> None:
    from playwright.sync_api import sync_playwright

    from dashboard.cache import metric_spectra_path, spectra_path
    from lowrank.models.packaged import minilm_rt_dir

    p = parser(__doc__)
    p.add_argument("--edits", type=int, default=5, help="number of rank edits to time")
    p.add_argument("--cold-starts", type=int, default=5, help="number of fresh servers to time the Spectra page on")
    p.add_argument("--first-runs", type=int, default=1, help="number of first runs (empty cache) to time")
    p.add_argument("--decoder-model", default="smollm2-135m")
    p.add_argument("--decoder-task", default="lee")
    p.add_argument("--no-decoder", action="store_true", help="skip the decoder's dense evaluation")
    p.add_argument("--demo", action="store_true", help="also time the stakeholder demo (minutes)")
    p.add_argument(
        "--kfac-spectra",
        nargs="*",
        default=["minilm-rt:rotten_tomatoes", "smollm2-135m:lee"],
        metavar="MODEL:TASK",
        help="models to time the cold Spectra page under the K-FAC metric on",
    )
    p.add_argument("--no-kfac-spectra", action="store_true", help="skip the cold Spectra under the K-FAC metric")
    p.add_argument(
        "--kfac-first-visit",
        action="store_true",
        help="remove each model's K-FAC spectra from the disk cache first, so the page computes them",
    )
    p.add_argument("--decoder-demo", action="store_true", help="also time the decoder demo (minutes)")
    args = p.parse_args()
    if args.model == "minilm-rt" and not (minilm_rt_dir() / "model.safetensors").exists():
        print("minilm-rt is not built yet: measuring minilm instead")
        args.model = "minilm"
    env = {"LOWRANK_DEFAULT_MODEL": args.model, "LOWRANK_DEFAULT_TASK": args.task}
    log = RESULTS / "dashboard-server.log.tmp"
    rows, extra = [], {}
    spectra_file = spectra_path(args.model)
    extra["spectra_on_disk_before"] = bool(spectra_file and spectra_file.exists())
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        starts = []
        for k in range(max(1, args.cold_starts)):
            starts.append(cold_spectra(browser, env, log))
            print(
                f"cold start {k + 1}: health {starts[-1][0]:.1f} s, spectra {starts[-1][1]:.1f} s, "
                f"heatmap {starts[-1][2]:.1f} s",
                flush=True,
            )
        extra["cold_starts"] = [{"health_s": h, "spectra_s": c, "heatmap_s": m} for h, c, m in starts]
        rows.append(
            {
                "measurement": "server answering health check (median)",
                "seconds": statistics.median(s[0] for s in starts),
                "target_s": None,
            }
        )
        rows.append(
            {
                "measurement": f"cold start -> spectra visible (median of {len(starts)})",
                "seconds": statistics.median(s[1] for s in starts),
                "target_s": 10.0,
            }
        )
        rows.append(
            {"measurement": "cold start -> spectra visible (first start)", "seconds": starts[0][1], "target_s": 10.0}
        )
        rows.append(
            {
                "measurement": "cold start -> heatmap visible (median)",
                "seconds": statistics.median(s[2] for s in starts),
                "target_s": None,
            }
        )

        firsts = [first_run(browser, log) for _ in range(args.first_runs)]
        if firsts:
            print(f"first run -> Home with the build's progress: {', '.join(f'{s:.1f} s' for s in firsts)}", flush=True)
            extra["first_run_seconds"] = firsts
            rows.append(
                {
                    "measurement": f"first run (empty cache) -> Home with the build's progress (median of "
                    f"{len(firsts)})",
                    "seconds": statistics.median(firsts),
                    "target_s": 60.0,
                }
            )

        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        with DashboardServer(env, log_path=log) as server:
            server.wait_healthy()
            page.goto(f"{server.url}/Ranks", timeout=TIMEOUT)
            page.get_by_role("heading", name="Ranks", exact=True).wait_for(timeout=TIMEOUT)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(state="visible", timeout=TIMEOUT)
            wait_idle(page, TIMEOUT)
            edits = []
            for k in range(args.edits):
                edits.append(edit_first_rank(page, 40 + 8 * (k % 2)))
                print(f"rank edit {k + 1}: {edits[-1]:.2f} s", flush=True)
            extra["rank_edit_seconds"] = edits
            rows.append(
                {
                    "measurement": f"rank edit -> totals updated (median of {len(edits)})",
                    "seconds": statistics.median(edits),
                    "target_s": 1.0,
                }
            )
            rows.append({"measurement": "rank edit -> totals updated (max)", "seconds": max(edits), "target_s": 1.0})

            if args.demo:
                page.locator('[data-testid="stSidebar"] a', has_text="Home").first.click()
                page.get_by_role("button", name="Run the demo").wait_for(timeout=TIMEOUT)
                wait_idle(page, TIMEOUT)
                start = time.perf_counter()
                page.get_by_role("button", name="Run the demo").click()
                replace = page.get_by_role("button", name="Replace it and run the demo")
                page.wait_for_timeout(1000)
                if replace.count():  # the rank edits above made a hand-edited plan: the demo asks first
                    replace.click()
                page.get_by_text("keeping 70%", exact=False).wait_for(timeout=TIMEOUT)
                page.locator('[data-testid="stAlertContentSuccess"]', has_text="Sweep").first.wait_for(timeout=TIMEOUT)
                rows.append(
                    {
                        "measurement": "stakeholder demo (click -> final trade-off plot)",
                        "seconds": time.perf_counter() - start,
                        "target_s": 300.0,
                    }
                )
        if not args.no_kfac_spectra:
            extra["kfac_spectra"] = []
            for pair in args.kfac_spectra:
                model, _, task = pair.partition(":")
                if model == "minilm-rt" and args.model == "minilm":
                    model = "minilm"  # not built yet (see above)
                statistics_s = kfac_statistics(model, task)
                entry = metric_spectra_path(model, task, "kfac_svd")  # None for a hub id
                if args.kfac_first_visit and entry is not None and entry.exists():
                    entry.unlink()  # a derived cache entry: the first visit computes it again
                on_disk = bool(entry and entry.exists())
                charts, complete = cold_kfac_spectra(browser, model, task, log)
                print(
                    f"cold Spectra under K-FAC on {model}: charts {charts:.1f} s, whole page {complete:.1f} s "
                    f"(spectra on disk before: {on_disk}; statistics {statistics_s:.1f} s)",
                    flush=True,
                )
                extra["kfac_spectra"].append(
                    {
                        "model": model,
                        "task": task,
                        "seconds": charts,
                        "page_complete_s": complete,
                        "spectra_on_disk_before": on_disk,
                        "statistics_s": statistics_s,
                    }
                )
                visit = "from disk" if on_disk else "first visit"
                rows.append(
                    {
                        "measurement": f"cold start -> Spectra charts under K-FAC, cached statistics ({model}, {visit})",
                        "seconds": charts,
                        "target_s": KFAC_TARGETS_S.get(model),
                    }
                )
                rows.append(
                    {
                        "measurement": f"cold start -> whole Spectra page under K-FAC ({model}, {visit})",
                        "seconds": complete,
                        "target_s": None,
                    }
                )
        if args.decoder_demo:
            seconds = decoder_demo(browser, env, log)
            print(f"decoder demo: {seconds:.0f} s", flush=True)
            rows.append(
                {
                    "measurement": "decoder demo (click -> generations side by side), "
                    f"{os.environ.get('LOWRANK_DEMO_DECODER') or 'smollm2-135m'}",
                    "seconds": seconds,
                    "target_s": 600.0,
                }
            )
        browser.close()

    if not args.no_decoder:
        decoder = decoder_evaluation(args.decoder_model, args.decoder_task, args.limit)
        extra["decoder"] = {"model": args.decoder_model, "task": args.decoder_task, **decoder}
        print(
            f"decoder dense evaluation: {decoder['evaluation_s']:.1f} s ({decoder['latency_s']:.1f} s latency: "
            f"{decoder['note']}), perplexity {decoder['perplexity']:.2f}",
            flush=True,
        )
        rows.append(
            {
                "measurement": f"{args.decoder_model} dense evaluation on {args.decoder_task} (quality + latency)",
                "seconds": decoder["evaluation_s"],
                "target_s": None,
            }
        )
        rows.append(
            {
                "measurement": f"{args.decoder_model} latency measurement (budgeted)",
                "seconds": decoder["latency_s"],
                "target_s": None,
            }
        )
    write("dashboard", args, rows, extra)


if __name__ == "__main__":
    main()
