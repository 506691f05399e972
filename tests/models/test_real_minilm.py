"""Touches the real packaged all-MiniLM-L6-v2 (22.7M parameters)."""

import pytest

from lowrank import compress, load_model, spectra


@pytest.mark.slow
def test_packaged_minilm_spectra_and_compression():
    loaded = load_model("minilm")
    assert loaded.kind == "encoder" and 22_000_000 < loaded.num_parameters() < 23_000_000
    table = spectra(loaded)
    assert len(table) == 36  # 6 blocks x 6 Linear layers
    assert set(zip(table["out"], table["in"])) == {(384, 384), (1536, 384), (384, 1536)}
    # a trained matrix is far from low rank but far from uniform: 99% energy needs most, not all, directions
    assert (table["rank99"] <= table[["out", "in"]].min(axis=1)).all()
    assert (table["effective_rank"] > 50).all()
    small = compress(loaded, 0.5)
    assert len(small.model.lowrank_info.ranks) == 36
