import math

import pytest
import torch

from lowrank import compress, evaluate, load_task
from lowrank.evaluate import parameter_counts


def test_classification_accuracy_matches_manual(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    result = evaluate(tiny_bert, task, "validation", measure_latency=False)
    texts, labels = task.texts["validation"], torch.tensor(task.labels["validation"])
    batch = tiny_bert.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        manual = (tiny_bert.model(**batch).logits.argmax(-1) == labels).float().mean().item()
    assert result.metric == "accuracy" and result.value == pytest.approx(manual)
    assert result.examples == 8


def test_perplexity_is_exp_of_loss(tiny_llama, text_task):
    result = evaluate(tiny_llama, text_task, "validation", max_length=16, measure_latency=False)
    assert result.metric == "perplexity" and result.value == pytest.approx(math.exp(result.loss))
    assert result.value > 1


def test_size_params_and_latency_drop_after_compression(tiny_bert, sentiment_csv):
    dense = evaluate(tiny_bert, sentiment_csv)
    small = evaluate(compress(tiny_bert, 0.3), sentiment_csv)
    assert small.params_linear < 0.35 * dense.params_linear
    assert small.size_bytes < dense.size_bytes
    assert dense.latency_ms_b1 > 0 and dense.latency_ms_b32 > 0
    total, linear = parameter_counts(tiny_bert.model)
    assert total == dense.params_total and linear == dense.params_linear == 2 * (4 * 64 * 64 + 2 * 64 * 256)


def test_encoder_without_head_cannot_be_scored(tiny_llama, sentiment_csv):
    with pytest.raises(ValueError, match="not a classifier"):
        evaluate(tiny_llama, sentiment_csv)
