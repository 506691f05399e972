"""Generations in the report: which saved models the best runs have, the HTML section, the CLI's error without any."""

from __future__ import annotations

import pandas as pd

from lowrank.experiments.store import RunStore
from lowrank.report import render_html, saved_models, summary, summary_figure, with_generations
from tests.report.test_summary import add_run
from tests.robustness.cli_errors import assert_clear_error, run


def test_saved_models_are_the_best_runs_whose_folder_exists_and_the_report_shows_the_generations(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    add_run(store, "m", "lee", "dense", 20.0, metric="perplexity")
    kept = tmp_path / "kept"
    kept.mkdir()
    add_run(store, "m", "lee", "kfac_svd", 22.0, 0.8, metric="perplexity", output_dir=str(kept))
    add_run(store, "m", "lee", "kfac_svd", 30.0, 0.6, metric="perplexity", output_dir=str(tmp_path / "gone"))
    s = summary(store, "m", "lee")
    assert saved_models(s) == {"kfac_svd at 80%": str(kept)}
    table = pd.DataFrame({"prompt": ["The city"], "dense": ["<b>grew</b>"], "kfac_svd at 80%": ["grew fast"]})
    page = render_html(with_generations(s, table), [summary_figure(s)])
    assert "Generations side by side" in page and "&lt;b&gt;grew&lt;/b&gt;" in page and "grew fast" in page
    assert "Generations side by side" not in render_html(s, [summary_figure(s)])


def test_report_generate_without_a_saved_model_is_a_clear_error(capsys, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    add_run(store, "m", "lee", "dense", 20.0, metric="perplexity")
    add_run(store, "m", "lee", "svd", 22.0, 0.5, metric="perplexity")
    code, _, err = run(
        capsys, "report", "--model", "m", "--task", "lee", "--store", tmp_path / "runs.sqlite", "--generate"
    )
    assert_clear_error(code, err, "no saved compressed model", "--generate")
