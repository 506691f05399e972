"""Batched per-example gradients and data-parallel statistics (torch.distributed, gloo on CPU)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lowrank
from lowrank.statistics import StatisticsSettings, select, statistics_for
from lowrank.statistics.collectors import SquaredGradients

SETTINGS = StatisticsSettings(num_batches=4, batch_size=3)


def test_batched_squared_gradients_equal_the_per_example_loop(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 5)
    x, g = torch.randn(6, 4, 7), torch.randn(6, 4, 5)
    reference = sum((g[n].T @ x[n]).square() for n in range(6))
    monkeypatch.setattr("lowrank.statistics.collectors.CHUNK", 2 * 35)  # two examples per chunk
    collector = SquaredGradients(layer)
    collector.consume(x, g)
    collector.remove()
    assert torch.allclose(collector.total, reference, rtol=1e-6, atol=1e-7)


def _worker(rank, world, init_file, model_dir, csv, out_dir):
    os.environ["LOWRANK_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loaded = lowrank.load_model(model_dir)
        fisher = select(statistics_for(loaded, csv, ("fisher",), SETTINGS, use_cache=False), "fisher")
        moments = statistics_for(loaded, csv, ("activations", "gradients"), SETTINGS, use_cache=False)
        if rank == 0:
            torch.save({"fisher": fisher, "moments": moments}, os.path.join(out_dir, "parallel.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_all_reduce_to_the_single_process_statistics(tiny_bert_dir, sentiment_csv, tmp_path):
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tiny_bert_dir), str(sentiment_csv), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    parallel = torch.load(tmp_path / "parallel.pt")
    loaded = lowrank.load_model(str(tiny_bert_dir))
    fisher = select(statistics_for(loaded, sentiment_csv, ("fisher",), SETTINGS, use_cache=False), "fisher")
    moments = statistics_for(loaded, sentiment_csv, ("activations", "gradients"), SETTINGS, use_cache=False)
    for name, F in fisher.items():
        assert torch.allclose(parallel["fisher"][name], F, rtol=1e-6, atol=1e-12), name
        for key, tensor in moments[name].items():
            assert torch.allclose(parallel["moments"][name][key], tensor, rtol=1e-6, atol=1e-12), (name, key)


def test_without_a_group_the_pass_is_single_process():
    from lowrank.statistics.passes import world

    assert world() == (0, 1)
