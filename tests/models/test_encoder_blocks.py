"""A BERT classifier run one encoder block at a time: the layout reproduces the model, and the block sweep's
error-compensated forms run on it (plain forms stay the classifier default until the suite says otherwise)."""

import json

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from lowrank import (
    compress,
    compress_in_blocks,
    compress_in_memory,
    get_method,
    load_compressed,
    load_task,
    method_form,
)
from lowrank.cli.main import main
from lowrank.data import batches
from lowrank.methods import COMPENSATE
from lowrank.models.architectures import block_layout, encoder_layout, supported_types
from lowrank.models.streamed import Blocks
from lowrank.sequential import sequential_reason, sweepable
from lowrank.statistics import StatisticsSettings, statistics_for
from lowrank.statistics.blockwise import gradient_sweep, sample

SETTINGS = StatisticsSettings(num_batches=2, batch_size=4, max_length=16)


def run_blocks(layout, model, batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = layout.embed_tokens(model, batch["input_ids"])
        context = layout.context(model, hidden, batch.get("attention_mask"))
        for index in range(layout.num_blocks(model)):
            hidden = layout.run_block(model, index, hidden, context)
        return layout.logits(model, hidden)


def test_the_layout_runs_the_classifier_block_by_block(tiny_bert, sentiment_csv):
    """Embeddings, padded batches and the pooler: the blocks one after the other give the model's logits and loss."""
    task = load_task(str(sentiment_csv))
    batch = next(iter(batches(task, tiny_bert.tokenizer, "train", 4, 16)))
    assert not batch["attention_mask"].all()  # padding is masked
    layout = block_layout("classifier", tiny_bert.model.config)
    assert layout.block_name(1) == "bert.encoder.layer.1" and sweepable(tiny_bert)
    model = tiny_bert.model.eval()
    with torch.no_grad():
        reference = model(**batch)
    assert torch.allclose(run_blocks(layout, model, batch), reference.logits, atol=1e-5)
    hidden = torch.randn(2, 5, model.config.hidden_size)
    assert torch.allclose(
        layout.loss(model, hidden, torch.tensor([0, 1])),
        torch.nn.functional.cross_entropy(layout.logits(model, hidden), torch.tensor([0, 1])),
    )


def test_a_family_without_a_pooler_runs_its_head_on_the_sequence():
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3
    )
    model = RobertaForSequenceClassification(config).eval()
    layout = encoder_layout(config)
    assert layout.base == "roberta" and "roberta" in supported_types("classifier")
    ids = torch.randint(5, 60, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(run_blocks(layout, model, {"input_ids": ids, "attention_mask": mask}), reference, atol=1e-5)


def test_a_classifier_never_streams_from_disk(tiny_bert_dir):
    """Block sweeps run on a classifier in memory; loading one block at a time from disk stays a causal LM's."""
    assert sequential_reason(tiny_bert_dir, fraction=0.0) is None


def test_gradient_sweep_equals_the_in_memory_gradients(tiny_bert, sentiment_csv, tmp_path):
    """The classifier's loss through the layout is the one statistics_for differentiates (the data labels)."""
    task = load_task(str(sentiment_csv))
    linears = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    swept = {}
    for step in gradient_sweep(
        Blocks(tiny_bert.model.eval(), block_layout("classifier", tiny_bert.model.config)),
        sample(task, tiny_bert.tokenizer, SETTINGS),
        linears,
        ("gradients",),
        workdir=tmp_path / "sweep",
        settings=SETTINGS,
    ):
        swept |= step.stats
    whole = statistics_for(tiny_bert, task, ("gradients",), SETTINGS, use_cache=False)
    for name in linears:
        for key, tensor in swept[name].items():
            assert torch.allclose(tensor, whole[name][key], rtol=1e-4, atol=1e-7), (name, key)


@pytest.mark.parametrize("method", ["svd_llm", "kfac_svd"])
def test_compensated_forms_run_on_a_classifier(method, tiny_bert, sentiment_csv):
    """Block 0 sees the dense inputs (X_hat = X): its factors are the plain method's; the last block is fitted
    from the compressed inputs, so it differs. The cached dense statistics and a dense gradient sweep agree."""
    task = load_task(str(sentiment_csv))
    stats = statistics_for(tiny_bert, task, get_method(method).needs, SETTINGS, use_cache=False)
    plain = compress(tiny_bert, 0.5, method, stats=stats)
    held = compress_in_memory(tiny_bert, 0.5, f"{method}_compensated", task, SETTINGS, stats=stats)

    def product(model, name):
        layer = model.get_submodule(name)
        return (layer.U @ layer.V).detach()

    first, last = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"
    assert torch.allclose(product(held.model, first), product(plain.model, first), atol=1e-4)
    assert not torch.allclose(product(held.model, last), product(plain.model, last), atol=1e-4)
    assert held.model.lowrank_info.sequential["statistics"].startswith("forward sweep (compensated")
    if method == "kfac_svd":  # no cached gradients: one dense gradient sweep of the classifier first
        swept = compress_in_blocks(tiny_bert, 0.5, "kfac_svd_compensated", task, SETTINGS)
        assert torch.allclose(product(swept.model, last), product(held.model, last), atol=1e-4)


def test_the_classifier_default_is_the_plain_form_and_the_cli_compensates_on_request(
    capsys, tiny_bert_dir, tiny_bert, sentiment_csv, tmp_path
):
    assert method_form(tiny_bert, "kfac_svd") == ("kfac_svd_compensated" if COMPENSATE["classifier"] else "kfac_svd")
    base = ["compress", "--model", str(tiny_bert_dir), "--keep", "0.5", "--method", "svd_llm", "--task"]
    base += [str(sentiment_csv), "--batches", "2", "--batch-size", "4", "--json"]
    for flag, method in (("--compensate", "svd_llm_compensated"), ("--no-compensate", "svd_llm")):
        out_dir = tmp_path / flag
        assert main([*base, flag, "--out", str(out_dir)]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["method"] == method == load_compressed(out_dir).model.lowrank_info.method
