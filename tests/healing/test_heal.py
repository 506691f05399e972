"""Healing: the best held-out checkpoint is kept, block level lowers the block error, sequential equals in memory,
the healed folder loads and records its recipe, classifiers are distilled, bad input is refused in one line."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from lowrank import HealConfig, compress, heal, heal_sequential, load_compressed, load_model, save_compressed
from lowrank.data import load_task
from lowrank.healing import DEFAULT_HEALING, default_healing
from lowrank.healing.blocks import BlockRecord, heal_blocks
from lowrank.healing.data import heal_batches
from lowrank.healing.distill import heldout_kl
from lowrank.healing.loss import kl_mean, kl_sum
from lowrank.info import CompressionInfo
from lowrank.layers import LowRankLinear
from lowrank.models.architectures import block_layout, decoder_layout
from lowrank.models.streamed import Blocks

SMALL = dict(batch_size=2, max_length=16, heldout_batches=2)


def factors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith((".U", ".V"))}


@pytest.fixture()
def small_llama(tiny_llama):
    return compress(tiny_llama, 0.3, "svd")


def measured_kl(healed, dense, task, config) -> float:
    _, heldout = heal_batches(task, healed.tokenizer, config)
    return heldout_kl(healed.model, dense.model, heldout, healed.kind, healed.device)


def test_end_to_end_keeps_the_best_heldout_checkpoint(small_llama, tiny_llama, text_task):
    config = HealConfig(level="end-to-end", steps=12, lr=3e-3, eval_every=2, patience=10, **SMALL)
    before = factors(small_llama.model)
    healed = heal(small_llama, tiny_llama, text_task, config)
    record = healed.model.lowrank_info.healing
    e2e = record["end_to_end"]
    assert record["heldout_after"] < record["heldout_before"]  # this recipe does improve the toy model
    best = min(value for _, value in e2e["heldout"])
    assert record["heldout_after"] == pytest.approx(best) and e2e["heldout_after"] == pytest.approx(best)
    # the returned model is the best checkpoint: its held-out KL, measured again, is the reported one
    assert measured_kl(healed, tiny_llama, text_task, config) == pytest.approx(record["heldout_after"], rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in factors(small_llama.model).items())  # input untouched
    assert record["train_tokens"] > 0 and record["config"]["lr"] == 3e-3 and record["seconds"] > 0


def test_the_time_budget_holds_the_whole_call_and_its_last_measurement(small_llama, tiny_llama, text_task):
    """Stopped by its budget, healing still measures its last steps on held-out text, within the budget: the room
    for one more step and one measurement is kept free before the deadline, and the clock starts with the call."""
    budget = 1.5
    config = HealConfig(level="end-to-end", steps=100_000, time_budget_s=budget, eval_every=50, patience=10**6, **SMALL)
    healed = heal(small_llama, tiny_llama, text_task, config)
    record = healed.model.lowrank_info.healing
    e2e = record["end_to_end"]
    assert e2e["stopped"] == "time budget" and 0 < e2e["steps"] < 100_000
    assert e2e["heldout"][-1][0] == e2e["steps"]  # the steps after the last periodic check were measured
    assert record["seconds"] <= budget * 1.2  # one step or measurement slower than the ones before is the slack


def test_a_step_size_that_overshoots_is_backed_off_from_the_best_checkpoint(small_llama, tiny_llama, text_task):
    """Without a back-off, a learning rate that overshoots never improves the held-out KL and the unhealed model is
    kept; with one, each measurement without a new best goes back to the best checkpoint at a tenth of the rate,
    until a rate that heals."""
    overshoot = HealConfig(level="end-to-end", steps=40, lr=1.0, eval_every=2, patience=4, warmup_steps=0, **SMALL)
    plain = heal(small_llama, tiny_llama, text_task, overshoot).model.lowrank_info.healing
    assert plain["end_to_end"]["best_step"] == 0 and plain["end_to_end"]["learning_rates"] == [[0, 1.0]]
    record = heal(small_llama, tiny_llama, text_task, overshoot.with_(backoff=0.1)).model.lowrank_info.healing
    e2e = record["end_to_end"]
    assert record["heldout_after"] < record["heldout_before"] and e2e["best_step"] > 0
    best, expected = e2e["heldout"][0][1], [[0, 1.0]]
    for step, value in e2e["heldout"][1:]:
        if value < best:
            best = value
        else:
            expected.append([step, expected[-1][1] * 0.1])
    if e2e["stopped"] == "no better held-out loss":
        expected.pop()  # the measurement that ran out of patience stops instead
    assert [step for step, _ in e2e["learning_rates"]] == [step for step, _ in expected] and len(expected) > 1
    assert [lr for _, lr in e2e["learning_rates"]] == pytest.approx([lr for _, lr in expected])


def test_the_backoff_is_a_factor_in_zero_one():
    for bad in (0.0, 1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match="healing backoff"):
            HealConfig(backoff=bad)
    assert HealConfig(backoff=1.0).backoff == 1.0


def test_a_diverging_run_returns_the_unhealed_model(small_llama, tiny_llama, text_task):
    config = HealConfig(level="end-to-end", steps=6, lr=50.0, eval_every=1, patience=2, warmup_steps=0, **SMALL)
    healed = heal(small_llama, tiny_llama, text_task, config)
    record = healed.model.lowrank_info.healing
    assert record["end_to_end"]["best_step"] == 0
    assert record["heldout_after"] == record["heldout_before"]
    original = factors(small_llama.model)
    assert all(torch.equal(original[k], v) for k, v in factors(healed.model).items())


def _block_error(compressed, dense, batches, index: int) -> float:
    """||f_dense(h) - f_comp(h)||^2 / ||f_dense(h)||^2 of block ``index`` on the dense inputs ``h``."""
    layout = decoder_layout(dense.model.config)
    ours, theirs = Blocks(compressed.model, layout), Blocks(dense.model, layout)
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            h = theirs.embed(b["input_ids"])
            ctx = theirs.context(h, None)
            for i in range(index):
                h = theirs.run_block(i, h, ctx)
            target = theirs.run_block(index, h, ctx)
            num += float((ours.run_block(index, h, ctx) - target).pow(2).sum())
            den += float(target.pow(2).sum())
    return num / den


def test_block_healing_lowers_the_block_output_error(small_llama, tiny_llama, text_task):
    config = HealConfig(level="block", block_steps=40, block_lr=3e-3, **SMALL)
    healed = heal(small_llama, tiny_llama, text_task, config)
    blocks = healed.model.lowrank_info.healing["blocks"]
    assert all(a <= b for a, b in zip(blocks["block_error_after"], blocks["block_error_before"]))
    _, heldout = heal_batches(text_task, tiny_llama.tokenizer, config)
    # measured here, independently of the record: block 0 sees the same embeddings in both models
    assert _block_error(healed, tiny_llama, heldout, 0) < 0.7 * _block_error(small_llama, tiny_llama, heldout, 0)
    assert healed.model.lowrank_info.healing["heldout_after"] < healed.model.lowrank_info.healing["heldout_before"]


def test_block_healing_runs_only_the_batches_it_trains_on_and_none_past_its_deadline(
    small_llama, tiny_llama, text_task, monkeypatch
):
    """The training batches run through every block cost as much as the training: only the first ``block_steps``
    (the most a block draws) are run, and past the deadline none (a budget of 300 s ran 411 s on smollm2-135m)."""
    calls = []
    run_block = Blocks.run_block

    def counted(self, index, hidden, context):
        calls.append(hidden.shape[0])
        return run_block(self, index, hidden, context)

    monkeypatch.setattr(Blocks, "run_block", counted)
    train, heldout = heal_batches(text_task, tiny_llama.tokenizer, HealConfig(**SMALL))
    assert len(train) > 3
    blocks = tiny_llama.model.config.num_hidden_layers
    per_heldout = 5 * blocks  # dense targets, unhealed, error before and after, the stream moving on

    heal(small_llama, tiny_llama, text_task, HealConfig(level="block", block_steps=3, **SMALL))
    fitted = 2 * 3 * blocks + 3 * blocks  # two streams of the 3 fitted batches, and the 3 training steps
    assert len(calls) == fitted + per_heldout * len(heldout)

    calls.clear()
    heal(small_llama, tiny_llama, text_task, HealConfig(level="block", block_steps=3, time_budget_s=1e-9, **SMALL))
    assert len(calls) == (per_heldout - blocks) * len(heldout)  # untrained: no error after training


@pytest.mark.parametrize("tied", [False, True])
def test_sequential_and_in_memory_block_healing_agree(tiny_llama_dir, tied_llama_dir, text_task, tmp_path, tied):
    base = tied_llama_dir if tied else tiny_llama_dir
    dense = load_model(str(base))
    config = HealConfig(level="block", block_steps=10, block_lr=3e-3, **SMALL)
    folder = save_compressed(compress(dense, 0.3, "svd"), tmp_path / "small")
    in_memory = heal(load_compressed(folder), dense, text_task, config)
    out = heal_sequential(folder, tmp_path / "healed", text_task, config, dense=base)
    streamed = load_compressed(out)
    expected = in_memory.model.state_dict()
    for name, tensor in streamed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-5, msg=name)
    a, b = streamed.model.lowrank_info.healing, in_memory.model.lowrank_info.healing
    assert a["blocks"]["block_error_after"] == pytest.approx(b["blocks"]["block_error_after"], rel=1e-4)
    assert a["heldout_after"] == pytest.approx(b["heldout_after"], rel=1e-4) and a["sequential"]


def test_the_healed_folder_loads_and_records_its_recipe(small_llama, tiny_llama, text_task, tmp_path):
    config = HealConfig(level="both", steps=4, block_steps=4, eval_every=2, **SMALL)
    healed = heal(small_llama, tiny_llama, text_task, config)
    folder = save_compressed(healed, tmp_path / "healed")
    loaded = load_compressed(folder)
    record = loaded.model.lowrank_info.healing
    assert record["level"] == "both" and record["config"] == config.to_dict() and record["split"] == "train"
    assert {"heldout_before", "heldout_after", "train_tokens", "seconds", "blocks", "end_to_end"} <= set(record)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, healed.model(ids).logits)
    data = json.loads((folder / "lowrank.json").read_text())
    assert data["format_version"] == 1 and data["healing"]["level"] == "both"
    del data["healing"]  # a file written before healing existed reads with an empty record
    assert CompressionInfo.from_json(data).healing == {}
    with pytest.raises(ValueError, match="'healing' must be an object"):
        CompressionInfo.from_json(data | {"healing": [1]})


def test_a_classifier_is_healed_end_to_end_and_block_by_block(tiny_bert, sentiment_csv):
    """End to end: distilled toward the dense class probabilities (at a temperature); block level: each encoder block
    fitted to the dense block's outputs; either way the held-out KL never rises."""
    small = compress(tiny_bert, 0.3, "svd")
    config = HealConfig(steps=8, lr=3e-3, eval_every=2, batch_size=4, max_length=16, heldout_batches=2)
    for temperature in (1.0, 2.0):
        healed = heal(small, tiny_bert, str(sentiment_csv), config.with_(temperature=temperature))
        record = healed.model.lowrank_info.healing
        assert record["heldout_after"] <= record["heldout_before"] and record["end_to_end"]["steps"] > 0
        assert record["config"]["temperature"] == temperature
    blocks = heal(small, tiny_bert, str(sentiment_csv), config.with_(level="block", block_steps=10, block_lr=3e-3))
    record = blocks.model.lowrank_info.healing
    fitted = record["blocks"]
    assert len(fitted["block_kept"]) == 2 and any(fitted["block_kept"])
    assert all(a <= b for a, b in zip(fitted["block_error_after"], fitted["block_error_before"]))
    assert record["heldout_after"] <= record["heldout_before"]


def test_each_kind_is_healed_with_its_own_recipe_unless_told_otherwise(tiny_bert_dir, tmp_path):
    """One table of recipes: the library default, a sweep's settings and the CLI's flags all start from the
    recipe of the model's kind."""
    from lowrank.cli.heal import chosen, register
    from lowrank.experiments.sweep_spec import SweepSpec

    for kind in ("causal-lm", "classifier"):
        assert default_healing(kind) is DEFAULT_HEALING[kind]
    with pytest.raises(ValueError, match="this model is a encoder"):
        default_healing("encoder")
    spec = SweepSpec(model="m", task="t", methods=["svd"], budgets=[0.5], healing={"steps": 7})
    assert spec.heal_config(default_healing("classifier")) == default_healing("classifier").with_(steps=7)
    assert spec.heal_config(default_healing("causal-lm")) == default_healing("causal-lm").with_(steps=7)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["heal", "--model", str(tiny_bert_dir), "--out", str(tmp_path / "o"), "--lr", "0.01"])
    assert chosen(args, default_healing("classifier")) == default_healing("classifier").with_(lr=0.01)
    args = parser.parse_args(["heal", "--model", str(tiny_bert_dir), "--out", str(tmp_path / "o"), "--norms"])
    assert chosen(args, default_healing("causal-lm")) == default_healing("causal-lm").with_(norms=True)
    # a classifier without a block layout heals end to end
    assert default_healing("classifier", blocks=False).level == "end-to-end"
    assert default_healing("causal-lm", blocks=False) == default_healing("causal-lm")


def test_the_temperature_softens_both_distributions_and_keeps_the_scale():
    """T^2 KL(softmax(z_d / T) || softmax(z / T)): the plain KL at T = 1, T^2 times the softened KL otherwise, zero
    for equal logits; a temperature must be positive."""
    torch.manual_seed(0)
    dense, logits = torch.randn(5, 3), torch.randn(5, 3)
    plain = torch.nn.functional.kl_div(logits.log_softmax(-1), dense.log_softmax(-1), log_target=True, reduction="sum")
    assert torch.allclose(kl_sum(dense, logits)[0], plain, atol=1e-6)
    soft = torch.nn.functional.kl_div(
        (logits / 4).log_softmax(-1), (dense / 4).log_softmax(-1), log_target=True, reduction="sum"
    )
    assert torch.allclose(kl_sum(dense, logits, temperature=4.0)[0], 16 * soft, atol=1e-6)
    assert float(kl_mean(dense, dense, temperature=3.0)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="healing temperature"):
        HealConfig(temperature=0.0)


@pytest.mark.parametrize("level", ["end-to-end", "block"])
def test_bfloat16_training_steps_run_in_bfloat16_and_the_heldout_checks_in_float32(
    small_llama, tiny_llama, text_task, level
):
    """Mixed precision: every forward of the compressed model's training steps (grad enabled) gives bfloat16, every
    held-out one (no grad) float32; the factors stay float32 and the never-worse guarantee holds."""
    seen: dict[bool, set] = {True: set(), False: set()}
    for module in small_llama.model.modules():  # heal's copy of the model keeps these hooks
        if isinstance(module, LowRankLinear):
            module.register_forward_hook(lambda _m, _i, out: seen[torch.is_grad_enabled()].add(out.dtype))
    config = HealConfig(level=level, steps=3, eval_every=1, block_steps=3, precision="bfloat16", **SMALL)
    healed = heal(small_llama, tiny_llama, text_task, config)
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert all(v.dtype == torch.float32 for v in factors(healed.model).values())
    record = healed.model.lowrank_info.healing
    assert record["heldout_after"] <= record["heldout_before"] and record["config"]["precision"] == "bfloat16"


def test_bad_input_is_refused_before_any_work(small_llama, tiny_llama, tiny_bert, text_task, sentiment_csv, tmp_path):
    with pytest.raises(ValueError, match="healing level must be one of"):
        HealConfig(level="layer")
    with pytest.raises(ValueError, match="healing lr must be"):
        HealConfig(lr=-1.0)
    with pytest.raises(ValueError, match="healing precision must be one of float32, bfloat16"):
        HealConfig(precision="float16")
    with pytest.raises(ValueError, match="is not a compressed model"):
        heal(tiny_llama, tiny_llama, text_task)
    with pytest.raises(ValueError, match="is itself compressed"):
        heal(small_llama, small_llama, text_task)
    with pytest.raises(ValueError, match="the dense model .* is a classifier"):
        heal(small_llama, tiny_bert, text_task)
    with pytest.raises(ValueError, match="causal language model, not a classifier"):
        heal(small_llama, tiny_llama, str(sentiment_csv), HealConfig(**SMALL))
    with pytest.raises(ValueError, match="holds 50 out"):
        heal(small_llama, tiny_llama, text_task, HealConfig(heldout_batches=50))
    folder = save_compressed(small_llama, tmp_path / "small")
    with pytest.raises(ValueError, match="block level only"):
        heal_sequential(folder, tmp_path / "out", text_task, HealConfig(level="both"))
    assert not (tmp_path / "out").exists()


def test_block_healing_fits_the_real_tokens_only(tiny_bert, sentiment_csv):
    """Padding is masked: batches that differ only in what the padded positions hold heal to the same record
    (a regression: the block loss and error averaged over the padded positions of a classifier's texts too)."""
    small = compress(tiny_bert, 0.3, "svd")
    config = HealConfig(level="block", block_steps=4, block_lr=3e-3, batch_size=4, max_length=16, heldout_batches=2)
    train, heldout = heal_batches(load_task(str(sentiment_csv)), tiny_bert.tokenizer, config)
    assert not all(b["attention_mask"].all() for b in train)

    def padded_with(batches, token):
        return [{**b, "input_ids": b["input_ids"].masked_fill(~b["attention_mask"].bool(), token)} for b in batches]

    layout = block_layout("classifier", tiny_bert.model.config)
    records = []
    for token in (0, 7):
        record = BlockRecord()
        model = copy.deepcopy(small.model).eval()
        blocks, dense = Blocks(model, layout), Blocks(tiny_bert.model.eval(), layout)
        list(heal_blocks(blocks, dense, padded_with(train, token), padded_with(heldout, token), config, record))
        records.append(record.to_dict())
    assert records[0]["block_steps"] == [4, 4]
    for key in ("block_error_before", "block_error_after", "heldout_before", "heldout_after"):
        assert records[0][key] == pytest.approx(records[1][key], rel=1e-5), key
