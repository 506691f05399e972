"""Healing in sweeps: every compressed model healed before evaluation, the recipe in the run row and the run key."""

from __future__ import annotations

import pytest

from lowrank.experiments.compare import comparable, reference_run
from lowrank.experiments.store import RunStore
from lowrank.experiments.sweep import SweepSpec, run_sweep
from lowrank.report.summarize import summary

HEALING = {"steps": 3, "eval_every": 1, "batch_size": 4, "max_length": 16, "heldout_batches": 2, "lr": 1e-3}


def test_a_sweep_heals_every_compressed_model_and_keys_runs_by_healing(
    tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch
):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    store = RunStore(tmp_path / "runs.sqlite")

    def sweep(healing) -> dict:
        spec = SweepSpec(str(tiny_bert_dir), str(sentiment_csv), ["svd"], [0.5], strategy="uniform", healing=healing)
        return run_sweep(spec, store, store.create_sweep(spec.to_dict(), runs_total=spec.runs_total))

    assert sweep(HEALING) == {"done": 2, "failed": 0}
    healed = store.runs(method="svd", status="done").iloc[0]
    assert healed["healing"]["config"]["steps"] == 3 and healed["healing"]["config"]["lr"] == 1e-3
    assert healed["healing"]["heldout_after"] <= healed["healing"]["heldout_before"]
    sweep(HEALING)  # the same key: found in the store, not run again
    assert len(store.runs(method="svd")) == 1
    sweep(None)  # without healing: another run
    plain = store.runs(method="svd")
    assert len(plain) == 2 and plain.iloc[0]["healing"] is None
    # compared under its own name: the Summary's plain-SVD baseline is the unhealed run
    dense = reference_run(store, str(sentiment_csv), model=str(tiny_bert_dir))
    shown = comparable(store.runs(status="done").query("method != 'dense'"), dense)
    assert sorted(shown["method"]) == ["svd", "svd healed"]
    best = summary(store, str(tiny_bert_dir), str(sentiment_csv)).rows[0]
    assert best.svd_run_id == int(plain.iloc[0]["id"])


@pytest.mark.parametrize(
    "healing, message", [({"level": "layer"}, "healing level"), ({"epochs": 2}, "unknown healing setting")]
)
def test_a_sweep_refuses_bad_healing_settings(healing, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec("m", "t", ["svd"], [0.5], healing=healing).validate()
