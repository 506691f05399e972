"""The Factorize page offers healing at every level for a classifier (run in the background, shown healed) and for a
causal LM, each starting from the recipe of its kind."""

from __future__ import annotations

from lowrank.experiments.store import RunStore
from lowrank.healing import DEFAULT_HEALING
from tests.dashboard.test_dashboard import click, env, new_app, visit, wait_for_sweep  # noqa: F401 (env: a fixture)


def test_factorize_heals_a_classifier(env, monkeypatch):  # noqa: F811
    # the classifier recipe with batches the 64 training texts of the test task can hold out
    recipe = DEFAULT_HEALING["classifier"].with_(batch_size=4, heldout_batches=2, block_steps=2)
    monkeypatch.setitem(DEFAULT_HEALING, "classifier", recipe)
    at = new_app().run()
    visit(at, "factorize")
    at.multiselect(key="factorize_methods").set_value(["svd"]).run()
    assert at.toggle(key="factorize_heal").value is False
    at.toggle(key="factorize_heal").set_value(True).run()
    level = at.selectbox(key="factorize_heal_level")
    assert level.options == ["block", "end-to-end", "both"] and level.value == recipe.level  # the classifier's
    level.set_value("end-to-end").run()
    at.number_input(key="factorize_heal_steps").set_value(2).run()
    click(at, "Factorize and evaluate")
    assert not at.error, [e.value for e in at.error]
    store = RunStore(env / "runs.sqlite")
    assert wait_for_sweep(store, int(store.sweeps().iloc[0]["id"]))["status"] == "done"
    run = store.runs(method="svd", status="done").iloc[0]
    assert run["healing"]["config"] == recipe.with_(level="end-to-end", steps=2).to_dict()
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
    level = at.selectbox(key="factorize_heal_level")
    assert level.options == ["block", "end-to-end", "both"] and level.value == DEFAULT_HEALING["causal-lm"].level
    assert "next-token distribution" in at.toggle(key="factorize_heal").help
