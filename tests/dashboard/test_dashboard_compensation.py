"""The Factorize page runs on a causal LM the form of each method that lowrank compress runs there: the
error-compensated one by default (both forms offered), in the background worker; an encoder is offered the plain
methods only."""

from __future__ import annotations

from lowrank.experiments.store import RunStore
from lowrank.methods.compensated import ALPHA
from tests.dashboard.test_dashboard import click, env, new_app, visit, wait_for_sweep  # noqa: F401 (env: a fixture)


def test_factorize_runs_the_compensated_form_on_a_causal_lm(env, seed_lee, tiny_llama_dir, monkeypatch):  # noqa: F811
    seed_lee(env)
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_llama_dir))
    at = new_app().run()
    visit(at, "factorize")
    picker = at.multiselect(key="factorize_methods")
    assert picker.value == ["svd", "kfac_svd_compensated"]
    assert {"kfac_svd", "svd_llm", "svd_llm_compensated"} <= {o.split(" ")[0] for o in picker.options}
    at.number_input(key="factorize_calibration_tokens").set_value(2048).run()
    click(at, "Factorize and evaluate")
    assert not at.error, [e.value for e in at.error]
    store = RunStore(env / "runs.sqlite")
    assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
    run = store.runs(method="kfac_svd_compensated", status="done").iloc[0]
    assert run["options"] == {"alpha": ALPHA}


def test_an_encoder_is_offered_the_plain_methods_only(env):  # noqa: F811
    at = new_app().run()
    visit(at, "factorize")
    picker = at.multiselect(key="factorize_methods")
    assert picker.value == ["svd", "kfac_svd"]
    assert not any("_compensated" in o for o in picker.options)
