"""benchmarks/decoder.py end to end in its quick mode on the tiny Llama: every stage it is asked for writes its rows
(dense, plain and compensated forms, healing), each measured against the dense model of the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lowrank.healing import default_healing
from lowrank.methods.compensated import VALIDATE

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark is a script, not a package
from decoder import Form, heal_key, sample_sizes, tokens_label  # noqa: E402


def test_the_quick_decoder_benchmark_writes_every_stage(tiny_llama_dir, tmp_path, seed_lee):
    cache = tmp_path / "cache"
    seed_lee(cache)
    out, report = tmp_path / "decoder.json", tmp_path / "decoder.md"
    env = os.environ | {"LOWRANK_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "benchmarks" / "decoder.py"), "--quick", "--model", str(tiny_llama_dir)]
    command += ["--corpora", "lee", "--stages", "dense", "main", "habits", "curve", "heal", "--threads", "1"]
    command += ["--habits", "edge", "clip", "--habit-rows", "uniform", "best"]
    done = subprocess.run(
        [*command, "--out", str(out), "--report", str(report)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["key"]: row for row in json.loads(out.read_text())["rows"]}
    dense = rows.pop("dense|lee")["ppl[lee]"]
    main = [row for row in rows.values() if row["stage"] == "main"]
    assert sorted(row["method"] for row in main) == [
        "kfac_svd",
        "kfac_svd_compensated",
        "svd_llm",
        "svd_llm_compensated",
    ]
    for row in main:  # a plain row has no alpha; its key carried the default's (a resumed run measured it again)
        assert ("|alpha=" in row["key"]) == ("alpha" in row) == row["method"].endswith("_compensated")
        assert row.get("validate", "none") == (VALIDATE if row["method"].endswith("_compensated") else "none")
        assert (f"|{VALIDATE}" in row["key"]) == row["method"].endswith("_compensated")  # the library's default
        if row["method"].endswith("_compensated"):
            multipliers = row["correction_multiplier"]
            assert multipliers["layers"] > 0 and 0 <= multipliers["min"] <= multipliers["mean"] <= 1
    best = min(main, key=lambda row: row["ppl[lee]"])
    habits = [row for row in rows.values() if row["stage"] == "habits"]
    alone = sorted(row["habits"] for row in habits if row["method"] == "kfac_svd" and row["strategy"] == "uniform")
    assert alone == ["grad_clip=4.0", "grad_edge=0.125"]  # each habit on plain kfac_svd, uniform ranks
    on_best = [row for row in habits if row["key"].endswith(f"|on={best['key']}")]
    assert sorted(row["habits"] for row in on_best) == ["grad_clip=4.0", "grad_edge=0.125"]
    assert all((row["method"], row["strategy"]) == (best["method"], best["strategy"]) for row in on_best)
    curve = [row for row in rows.values() if row["stage"] == "curve"]
    assert sorted(row["method"] for row in curve) == ["kfac_svd", "kfac_svd_compensated"]
    assert all(row["tokens"] == 1024 for row in curve)
    held = tokens_label(1024, curve[0]["calibration"]["tokens"])  # what the sample held (whole batches)
    (healed,) = [row for row in rows.values() if row["stage"] == "heal"]
    assert healed["healed_from"] == best["key"] and healed["healing"]["config"]["steps"] == 4
    for row in (*main, healed):
        assert row["x_dense[lee]"] == row["ppl[lee]"] / dense and row["protocol"].startswith("windows of")
    text = report.read_text()
    assert "| heal |" in text and "## Targets" in text and f"| curve | 0.6 | kfac_svd | uniform | {held} |" in text
    assert f"| lee | {healed['keep']} | healed | {best['method']}" in text  # the best healed row, against its target

    again = subprocess.run(
        [*command, "--out", str(out), "--report", str(report)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and f"resuming: {len(rows) + 1} rows" in again.stdout  # nothing measured twice


def test_a_rows_form_keeps_the_keys_of_rows_measured_before_alpha_and_validation():
    """Rows measured before alpha (full compensation) or validation record neither; their form reads them so, and
    its key suffix is the one they were stored under, so a resumed run does not measure them again."""
    before_alpha = {"method": "kfac_svd_compensated"}
    before_validation = {"method": "kfac_svd_compensated", "alpha": 0.25}
    validated = {"method": "kfac_svd_compensated", "alpha": 0.25, "validate": "held-out"}
    assert Form.of(before_alpha) == Form(True, 1.0, "none") and Form.of(before_alpha).key() == ""
    assert Form.of(before_validation).key() == "|alpha=0.25"
    assert Form.of(validated).key() == "|alpha=0.25|held-out"
    assert Form.of(validated).options() == {"alpha": 0.25, "validate": "held-out"}
    assert Form.of({"method": "kfac_svd"}) == Form(False) and Form(False).key() == "" and Form(False).options() == {}


def test_a_heal_row_is_keyed_by_its_back_off_and_precision():
    recipe = default_healing("causal-lm")
    plain, backed = heal_key("main|x", recipe), heal_key("main|x", recipe.with_(backoff=0.5))
    assert plain != backed and "backoff" not in plain and "|backoff=0.5|" in backed
    mixed = heal_key("main|x", recipe.with_(precision="bfloat16"))
    assert mixed not in (plain, backed) and "bfloat16" not in plain and "|bfloat16|" in mixed


def test_the_report_names_the_tokens_each_calibration_sample_held():
    recorded = {"task": "lee", "split": "train", "examples": 462, "tokens": 59136, "seed": 0}
    rows = [
        {"calibrated_on": "lee", "tokens": 65536, "calibration": recorded},
        {"calibrated_on": "lee", "tokens": 65536, "calibration": None},  # a heal row shares its row's sample
        {"calibrated_on": "lee", "tokens": 8192, "calibration": {"task": "lee", "tokens": 8192}},  # not recorded
        {"calibrated_on": "rt", "tokens": "all", "calibration": recorded | {"task": "rt", "tokens": 264320}},
    ]
    held = sample_sizes(rows)
    assert held == {("lee", "65536"): 59136, ("rt", "all"): 264320}
    assert tokens_label(65536, held[("lee", "65536")]) == "59,136 (whole split)"  # the split is smaller than asked
    assert tokens_label("all", held[("rt", "all")]) == "264,320 (whole split)"
    assert tokens_label(8192, 8192) == "8,192"
    assert tokens_label(8192, None) == "8,192" and tokens_label("all", None) == "all"
