"""A statistic kind is one row of ``STATISTIC_KINDS``: the resolver, the method registry, the block-wise sweeps and
the dashboard read it; kinds that share a collector share one calibration pass, in the library and the dashboard."""

from __future__ import annotations

import torch

import lowrank
import lowrank.statistics.resolve as resolve
from lowrank.methods import METHODS, Factorization, register_method
from lowrank.models.architectures import compressible_linears
from lowrank.needs import needs_for
from lowrank.statistics import STATISTIC_KINDS, StatisticKind, StatisticsSettings, statistics_for, statistics_label
from lowrank.statistics.blockwise import BlockStatistics, needs_gradients, unsupported
from lowrank.statistics.kinds import Collector
from lowrank.statistics.resolve import computations

SETTINGS = StatisticsSettings(num_batches=2, batch_size=4)


class InputPeaks:
    """A probe collector: the largest ``|x_j|`` each input feature of a Linear reaches (forward only)."""

    def __init__(self, module: torch.nn.Linear, backward: bool, settings: StatisticsSettings):
        self.peak = torch.zeros(module.in_features, dtype=torch.float64)
        self.scale, self.mask = 1.0, None
        self.handle = module.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().double()
        self.peak = torch.maximum(self.peak, x.max(dim=0).values.cpu())

    def accumulators(self) -> list[torch.Tensor]:
        return []

    def result(self, examples: int) -> dict[str, torch.Tensor]:
        return {"input_peak": self.peak.float()}

    def remove(self) -> None:
        self.handle.remove()


PEAKS = StatisticKind(
    "input_peak",
    ("input_peak",),
    "input peaks",
    "'input_peak': max |x| of each input feature, (in,)",
    Collector("input_peak", InputPeaks, "input peaks"),
)


def counted_passes(monkeypatch) -> list[str]:
    """Replace the resolver's calibration pass by a counting wrapper; returns the list it appends to."""
    seen: list[str] = []
    original = resolve.calibration_pass

    def counting(*args, **kwargs):
        seen.append(args[-1])
        return original(*args, **kwargs)

    monkeypatch.setattr(resolve, "calibration_pass", counting)
    return seen


def test_a_new_statistic_kind_is_one_table_row(monkeypatch, tiny_bert, sentiment_csv):
    monkeypatch.setitem(STATISTIC_KINDS, PEAKS.name, PEAKS)
    received = {}
    monkeypatch.setitem(METHODS, "peak_svd", None)  # the probe method is removed again after the test

    @register_method("peak_svd", "probe: SVD of W diag(peak), scaled back", needs=("input_peak",))
    def peak_svd(W, rank, stats):
        received[W.shape] = stats["input_peak"]
        s = stats["input_peak"].to(W.dtype).clamp_min(1e-6)
        U, S, Vh = torch.linalg.svd(W * s, full_matrices=False)
        return Factorization(U[:, :rank] * S[:rank], Vh[:rank] / s)

    stats = statistics_for(tiny_bert, sentiment_csv, needs_for(["peak_svd", "asvd"]), SETTINGS, use_cache=False)
    linears = compressible_linears(tiny_bert.model)
    for name, module in linears.items():
        peak, mean = stats[name]["input_peak"], stats[name]["input_abs_mean"]
        assert peak.shape == (module.in_features,)
        assert (peak >= mean - 1e-6).all() and (peak > 0).any()  # a maximum is at least the mean

    small = lowrank.compress(tiny_bert, 0.5, "peak_svd", stats=stats)
    assert len(received) == len({m.weight.shape for m in linears.values()})
    assert small.model.lowrank_info.method == "peak_svd"
    assert statistics_label(("input_peak", "gradients")) == "input peaks and output gradient statistics"
    assert computations(("input_peak", "activations")) == [("input_peak",), ("activations",)]
    assert unsupported(("input_peak", "mask")) == ["mask"] and not needs_gradients(("input_peak",))
    block = BlockStatistics(linears, ("input_peak",))
    block.remove()


def test_kinds_sharing_a_collector_share_one_pass(monkeypatch, tiny_bert, sentiment_csv):
    passes = counted_passes(monkeypatch)
    stats = statistics_for(tiny_bert, sentiment_csv, needs_for(["kfac_svd"]), SETTINGS, use_cache=False)
    assert len(passes) == 1
    assert all({"input_moment", "grad_moment"} <= set(tensors) for tensors in stats.values())
    statistics_for(tiny_bert, sentiment_csv, ("fisher", "activations", "gradients", "mask"), SETTINGS, use_cache=False)
    assert len(passes) == 3  # one more for the moments, one for the Fisher; the mask needs none


def test_the_dashboard_computes_kfac_statistics_in_one_pass(monkeypatch, tmp_path, tiny_bert_dir, sentiment_csv):
    import streamlit as st

    from dashboard import cache

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    st.cache_resource.clear()
    st.cache_data.clear()
    passes = counted_passes(monkeypatch)
    stats = cache.statistics(str(tiny_bert_dir), str(sentiment_csv), needs_for(["kfac_svd"]))
    assert len(passes) == 1
    assert all({"input_moment", "grad_moment"} <= set(tensors) for tensors in stats.values())
    cache.statistics(str(tiny_bert_dir), str(sentiment_csv), needs_for(["kfac_svd"]), also_if_cached=("fisher",))
    assert len(passes) == 1  # a rerun reads the memory cache; the Fisher is not computed when missing
    st.cache_resource.clear()
