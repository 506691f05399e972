"""The CUDA path: every step runs on a GPU when one is present (skipped otherwise)."""

import math

import pytest
import torch

import lowrank
from lowrank.needs import needs_for
from lowrank.statistics import StatisticsSettings, statistics_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture()
def cuda_bert(tiny_bert_dir):
    return lowrank.load_model(str(tiny_bert_dir), device="cuda")


def test_every_method_compresses_on_cuda(cuda_bert, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    methods = [
        m for m in lowrank.available_methods() if "compensation" not in lowrank.get_method(m).needs
    ]  # block loop
    stats = statistics_for(
        cuda_bert, sentiment_csv, needs_for(methods), StatisticsSettings(num_batches=2, batch_size=4)
    )
    dense = lowrank.evaluate(cuda_bert, sentiment_csv)
    for method in methods:
        small = lowrank.compress(cuda_bert, 0.5, method=method, stats=stats)
        layer = next(m for m in small.model.modules() if isinstance(m, lowrank.LowRankLinear))
        assert layer.U.device.type == "cuda", method
        result = lowrank.evaluate(small, sentiment_csv)
        assert 0 <= result.value <= 1 and result.latency_ms_b1 > 0
        assert result.params_linear < dense.params_linear
    lowrank.save_compressed(small, tmp_path / "out")
    again = lowrank.load_compressed(tmp_path / "out", device="cuda")
    batch = {k: v.cuda() for k, v in cuda_bert.tokenizer(["a good film"], return_tensors="pt").items()}
    with torch.no_grad():
        assert (again.model(**batch).logits - small.model(**batch).logits).abs().max().item() <= 1e-5


def test_training_on_cuda(cuda_bert, sentiment_csv):
    losses = lowrank.finetune(cuda_bert, sentiment_csv, lowrank.TrainConfig(max_steps=3, batch_size=8))
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_from_pretrained_places_the_factors_with_device_map(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    small = lowrank.compress(tiny_llama, 0.3)
    folder = lowrank.save_compressed(small, tmp_path / "small")
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cuda", dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, lowrank.LowRankLinear)]
    assert layers and {(m.U.device.type, m.U.dtype) for m in layers} == {("cuda", torch.bfloat16)}
    ids = tiny_llama.tokenizer(["a good film"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = small.model(input_ids=ids).logits
        got = model(input_ids=ids.cuda()).logits.float().cpu()
    assert (got - want).abs().max().item() <= 0.05 * want.abs().max().item()
