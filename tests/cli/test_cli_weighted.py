import json

import pytest

from lowrank import load_model, resolve_ranks
from lowrank.cli.main import main
from lowrank.statistics import StatisticsSettings
from lowrank.statistics.taylor import svd_loss_change


def test_fisher_risk_and_weighted_compress(capsys, tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    common = ["--model", str(tiny_bert_dir), "--task", str(sentiment_csv), "--batches", "2", "--batch-size", "4"]
    assert main(["fisher", *common, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and all(r["total"] > 0 and r["dispersion"] >= 0 for r in rows)
    assert main(["risk", *common, "--keep", "0.3", "--json"]) == 0
    risk = json.loads(capsys.readouterr().out)
    assert len(risk["layers"]) == 12 and isinstance(risk["summary"]["svd_expected_to_drop"], bool)
    assert all(layer["risk"] >= 0.99 for layer in risk["layers"])  # FWSVD never predicted worse than SVD by much
    # the default layer predictor: the full-Fisher form of plain SVD's residual, with the same statistics settings
    loaded = load_model(str(tiny_bert_dir))
    ranks = resolve_ranks(loaded.model, 0.3)
    expected = svd_loss_change(loaded, str(sentiment_csv), ranks, StatisticsSettings(num_batches=2, batch_size=4))
    assert [layer["output_change"] for layer in risk["layers"]] == pytest.approx(
        [expected[layer["name"]]["second_order"] for layer in risk["layers"]], rel=1e-5
    )
    assert all(layer["output_change"] > 0 for layer in risk["layers"])
    assert main(["risk", *common, "--keep", "0.3", "--taylor-split", "validation", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert all(layer["taylor_total"] >= layer["taylor_first"] for layer in layers)  # + 0.5 mean s^2 >= 0
    assert (
        main(
            [
                "compress",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(sentiment_csv),
                "--method",
                "tfwsvd",
                "--solver",
                "als",
                "--option",
                "max_iters=2",
                "--fisher-batches",
                "2",
                "--keep",
                "0.3",
                "--out",
                str(tmp_path / "out"),
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "tfwsvd" and record["layers"] == 12
    meta = json.loads((tmp_path / "out" / "lowrank.json").read_text())
    # the record states every option that ran, the defaults included
    assert meta["options"] == {"max_iters": 2, "solver": "als", "init_axis": "best", "tol": 1e-4}
    assert len(meta["history"]) == 12
