"""The Factorize page runs on a causal LM the form of each method that lowrank compress runs there: the
error-compensated one by default (both forms offered), in the background worker; a classifier starts from the plain
forms (its default, lowrank.methods.COMPENSATE) and is offered the compensated ones too."""

from __future__ import annotations

from lowrank.experiments.store import RunStore
from lowrank.methods.compensated import ALPHA, VALIDATE
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
    assert run["options"] == {"alpha": ALPHA, "validate": VALIDATE}


def test_a_classifier_starts_from_the_plain_forms_and_is_offered_the_compensated_ones(env):  # noqa: F811
    at = new_app().run()
    visit(at, "factorize")
    picker = at.multiselect(key="factorize_methods")
    assert picker.value == ["svd", "kfac_svd"]
    assert {"kfac_svd_compensated", "svd_llm_compensated"} <= {o.split(" ")[0] for o in picker.options}
