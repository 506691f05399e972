import json
import re

import pytest

from lowrank.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_methods_and_models_json(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0 and "svd" in [m["name"] for m in json.loads(out)]
    code, out, _ = run(capsys, "models", "--json")
    assert {"minilm", "minilm-rt", "smollm2-135m"} <= set(json.loads(out))


def test_compress_save_and_evaluate_round_trip(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    out_dir = tmp_path / "small"
    code, out, err = run(
        capsys,
        "compress",
        "--model",
        str(tiny_bert_dir),
        "--keep",
        "0.3",
        "--out",
        str(out_dir),
        "--task",
        str(sentiment_csv),
        "--evaluate",
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["layers"] == 12 and record["metric"] == "accuracy" and (out_dir / "lowrank.json").exists()
    code, out, err = run(capsys, "evaluate", "--model", str(out_dir), "--task", str(sentiment_csv), "--json")
    assert code == 0, err
    assert json.loads(out)["value"] == pytest.approx(record["value"])


def test_compress_with_plan_file(capsys, tmp_path, tiny_bert_dir):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"ranks": {"bert.encoder.layer.0.intermediate.dense": 4}}))
    code, out, err = run(capsys, "compress", "--model", str(tiny_bert_dir), "--plan", str(plan), "--json")
    assert code == 0, err
    assert json.loads(out)["layers"] == 1


def test_spectra_table(capsys, tiny_bert_dir):
    code, out, _ = run(capsys, "spectra", "--model", str(tiny_bert_dir))
    assert code == 0 and "effective_rank" in out and "attention.self.query" in out


def test_spectra_under_a_metric(capsys, tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv):
    """``--metric`` prints the spectra of the matrix the method truncates, with its statistics on ``--task``."""
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    common = ["--model", str(tiny_bert_dir), "--json", "--full"]
    code, out, err = run(capsys, "spectra", *common)
    plain = {row["name"]: row["singular_values"] for row in json.loads(out)}
    flags = ["--task", str(sentiment_csv), "--batches", "2", "--batch-size", "4"]
    code, out, err = run(capsys, "spectra", *common, "--metric", "svd_llm", *flags)
    assert code == 0, err
    rows = json.loads(out)
    assert {row["metric"] for row in rows} == {"svd_llm"}
    assert all(row["singular_values"] != plain[row["name"]] for row in rows)
    code, _, err = run(capsys, "spectra", "--model", str(tiny_bert_dir), "--metric", "tfwsvd")
    assert code == 2 and "no closed form" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["evaluate", "--model", "/no/such/dir-or-id"], "error:"),
        (["compress", "--model", "TINY", "--keep", "1.5"], r"\(0, 1\]"),
        (["compress", "--model", "TINY", "--method", "nope"], "unknown factorization method"),
        (["compress", "--model", "TINY", "--plan", "/no/plan.json"], "plan file not found"),
    ],
)
def test_bad_input_exits_2_with_message(capsys, tiny_bert_dir, argv, match):
    argv = [str(tiny_bert_dir) if a == "TINY" else a for a in argv]
    code, _, err = run(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error:") and re.search(match, last)


def test_compress_reports_the_whitening_regularizers(capsys, tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    code, out, _ = run(
        capsys,
        "compress",
        "--model",
        str(tiny_bert_dir),
        "--task",
        str(sentiment_csv),
        "--keep",
        "0.5",
        "--method",
        "svd_llm",
        "--fisher-batches",
        "1",
        "--fisher-batch-size",
        "4",
        "--json",
    )
    record = json.loads(out)
    assert code == 0 and record["layers"] == 12 and "layer(s)" in record["regularizers"]
