import math

import pytest
import torch

from lowrank import compress, evaluate, load_task
from lowrank.evaluation.quality import class_log_probabilities, prediction_kl
from lowrank.evaluation.size import parameter_counts


def test_classification_accuracy_matches_manual(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    result = evaluate(tiny_bert, task, "validation", latency=False)
    texts, labels = task.texts["validation"], torch.tensor(task.labels["validation"])
    batch = tiny_bert.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        manual = (tiny_bert.model(**batch).logits.argmax(-1) == labels).float().mean().item()
    assert result.metric == "accuracy" and result.value == pytest.approx(manual)
    assert result.examples == 8


def test_perplexity_is_exp_of_loss(tiny_llama, text_task):
    result = evaluate(tiny_llama, text_task, "validation", max_length=16, latency=False)
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


def test_log_probabilities_follow_the_split_and_match_the_logits(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    logp = class_log_probabilities(tiny_bert, task, batch_size=3)  # 8 examples: batches of 3, 3, 2
    batch = tiny_bert.tokenizer(task.texts["validation"], padding=True, return_tensors="pt")
    with torch.no_grad():
        manual = torch.log_softmax(tiny_bert.model(**batch).logits, -1)
    assert logp.shape == (8, 2)
    torch.testing.assert_close(logp, manual.double(), atol=1e-5, rtol=1e-5)


def test_prediction_kl_is_the_mean_kl_divergence_and_second_order_in_the_change(tiny_bert, sentiment_csv):
    task = load_task(sentiment_csv)
    tiny_bert.model.double()  # the second-order check needs more digits than float32 logits carry
    reference = class_log_probabilities(tiny_bert, task)
    assert prediction_kl(reference, reference) == 0.0
    other = torch.log_softmax(reference + torch.tensor([0.3, -0.1], dtype=torch.float64), -1)
    expected = torch.nn.functional.kl_div(other, reference, log_target=True, reduction="batchmean").item()
    assert expected > 0 and prediction_kl(reference, other) == pytest.approx(expected, rel=1e-9)

    weight = tiny_bert.model.bert.encoder.layer[0].intermediate.dense.weight
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction *= weight.norm() / direction.norm()

    def kl_after(step: float) -> float:
        original = weight.detach().clone()
        with torch.no_grad():
            weight.add_(step * direction)
            changed = class_log_probabilities(tiny_bert, task)
            weight.copy_(original)
        return prediction_kl(reference, changed)

    step = kl_after(0.01)
    # no first-order term: KL(+e) ~ KL(-e), and halving the step quarters the divergence
    assert step > 0
    assert kl_after(-0.01) == pytest.approx(step, rel=0.02)
    assert kl_after(0.005) / step == pytest.approx(0.25, rel=0.02)
    torch.testing.assert_close(class_log_probabilities(tiny_bert, task), reference)


def test_prediction_kl_refuses_mismatched_predictions(tiny_llama, sentiment_csv):
    with pytest.raises(ValueError, match="one shape"):
        prediction_kl(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="not a classifier"):
        class_log_probabilities(tiny_llama, sentiment_csv)


def test_the_latency_keyword_switches_the_latency_measurement(tiny_bert, sentiment_csv, monkeypatch):
    calls = []
    monkeypatch.setattr(
        "lowrank.evaluation.evaluation.measure_latencies",
        lambda *args, **kwargs: calls.append(args) or (1.5, 2.5, {"budget_s": 5.0}),
    )
    skipped = evaluate(tiny_bert, sentiment_csv, latency=False)
    assert calls == [] and skipped.latency_ms_b1 is skipped.latency_ms_b32 is skipped.latency is None
    timed = evaluate(tiny_bert, sentiment_csv, latency=True)
    assert len(calls) == 1 and (timed.latency_ms_b1, timed.latency_ms_b32) == (1.5, 2.5)
    assert timed.value == skipped.value and timed.loss == skipped.loss
    with pytest.raises(TypeError, match="measure_latency"):
        evaluate(tiny_bert, sentiment_csv, measure_latency=False)
