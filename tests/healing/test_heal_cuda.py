"""Healing on a GPU: both levels of a causal LM and a classifier's distillation keep every tensor on CUDA (skipped
without one)."""

from __future__ import annotations

import pytest
import torch

import lowrank
from lowrank import HealConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SMALL = dict(batch_size=2, max_length=16, heldout_batches=2, steps=3, block_steps=3, eval_every=1)


def test_healing_runs_on_cuda(tiny_llama_dir, tiny_bert_dir, text_task, sentiment_csv, tmp_path):
    dense = lowrank.load_model(str(tiny_llama_dir), device="cuda")
    healed = lowrank.heal(lowrank.compress(dense, 0.3, "svd"), dense, text_task, HealConfig(level="both", **SMALL))
    assert all(p.device.type == "cuda" for p in healed.model.parameters())
    record = healed.model.lowrank_info.healing
    assert record["heldout_after"] <= record["heldout_before"]
    folder = lowrank.save_compressed(lowrank.compress(dense, 0.3, "svd"), tmp_path / "small")
    out = lowrank.heal_sequential(folder, tmp_path / "healed", text_task, HealConfig(level="block", **SMALL),
                                  dense=tiny_llama_dir, device="cuda")  # fmt: skip
    assert lowrank.load_compressed(out).model.lowrank_info.healing["sequential"]
    bert = lowrank.load_model(str(tiny_bert_dir), device="cuda")
    small = lowrank.heal(
        lowrank.compress(bert, 0.3, "svd"), bert, str(sentiment_csv), HealConfig(**SMALL | {"batch_size": 4})
    )
    assert small.model.lowrank_info.healing["end_to_end"]["steps"] > 0
