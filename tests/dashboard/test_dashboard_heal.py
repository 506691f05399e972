"""The Factorize page offers healing: end to end for a classifier (run in the background, shown healed), every
level for a causal LM that runs block by block."""

from __future__ import annotations

from lowrank.experiments.store import RunStore
from tests.dashboard.test_dashboard import click, env, new_app, visit, wait_for_sweep  # noqa: F401 (env: a fixture)


def test_factorize_heals_a_classifier_end_to_end(env):  # noqa: F811
    at = new_app().run()
    visit(at, "factorize")
    at.multiselect(key="factorize_methods").set_value(["svd"]).run()
    assert at.toggle(key="factorize_heal").value is False
    at.toggle(key="factorize_heal").set_value(True).run()
    assert at.selectbox(key="factorize_heal_level").options == ["end-to-end"]  # no block level for an encoder
    at.number_input(key="factorize_heal_steps").set_value(2).run()
    click(at, "Factorize and evaluate")
    assert not at.error, [e.value for e in at.error]
    store = RunStore(env / "runs.sqlite")
    assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
    run = store.runs(method="svd", status="done").iloc[0]
    assert run["healing"]["config"]["steps"] == 2 and run["healing"]["level"] == "end-to-end"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("svd healed" in c.value and "held-out KL" in c.value for c in at.caption)


def test_factorize_offers_every_healing_level_for_a_causal_lm(env, seed_lee, tiny_llama_dir, monkeypatch):  # noqa: F811
    seed_lee(env)
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_llama_dir))
    at = new_app().run()
    assert at.session_state["task"] == "lee"
    visit(at, "factorize")
    at.toggle(key="factorize_heal").set_value(True).run()
    assert at.selectbox(key="factorize_heal_level").options == ["block", "end-to-end", "both"]
    assert "next-token distribution" in at.toggle(key="factorize_heal").help
