"""The fast form of each factorized layer: chosen by measured time, saved, loaded, same outputs."""

import json

import pytest
import torch
from torch import nn

from lowrank import LowRankLinear, compress, load_compressed, save_compressed
from lowrank.info import load_info
from lowrank.speed import SpeedSettings, optimize_speed
from tests.robustness.cli_errors import assert_clear_error, run


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


def stub_timer(slow_layers: set[str]):
    """Factorized forms of ``slow_layers`` time slower than dense, every other one faster; no compile."""
    calls = []

    def timer(form, name, run):
        calls.append((form, name))
        if form == "dense":
            return 1.0
        return 2.0 if name in slow_layers else 0.5

    return timer, calls


def test_a_layer_slower_factorized_than_dense_stays_dense(tiny_llama):
    small = compress(tiny_llama, 0.5)
    names = list(small.model.lowrank_info.ranks)
    modules = dict(small.model.named_modules())
    shape = {n: (modules[n].out_features, modules[n].in_features, modules[n].rank) for n in names}
    slow = names[0]
    same_shape = [n for n in names if shape[n] == shape[slow]]
    assert len(same_shape) < len(names)
    timer, calls = stub_timer({slow})
    speed = optimize_speed(small, SpeedSettings(batch=8, length=4, compile=False), timer=timer)
    layers = dict(small.model.named_modules())
    # one measurement per layer shape: every layer of the slow layer's shape (its projection in every block) merges
    for name in names:
        form = speed["layers"][name]["form"]
        assert form == ("dense" if name in same_shape else "factorized")
        assert isinstance(layers[name], nn.Linear if form == "dense" else LowRankLinear)
    assert len(calls) == 2 * len(set(shape.values()))  # factorized and dense, once per shape
    assert set(small.model.lowrank_info.ranks) == set(names) - set(same_shape)
    assert speed["batch"] == 8 and speed["length"] == 4 and "calibration_ms" in speed["conditions"]


def test_a_model_saved_with_merged_layers_loads_and_reproduces_its_logits(tiny_llama, tmp_path):
    small = compress(tiny_llama, 0.5)
    before = logits(small)
    slow = set(list(small.model.lowrank_info.ranks)[:3])
    timer, _ = stub_timer(slow)
    optimize_speed(small, SpeedSettings(compile=False), timer=timer)
    merged = [n for n, e in small.model.lowrank_info.speed["layers"].items() if e["form"] == "dense"]
    assert merged
    torch.testing.assert_close(logits(small), before, rtol=1e-4, atol=1e-4)  # U V merged: the same function
    folder = save_compressed(small, tmp_path / "fast")
    data = json.loads((folder / "lowrank.json").read_text())
    assert data["format_version"] == 1 and not set(merged) & set(data["ranks"])
    assert all(data["speed"]["layers"][n]["form"] == "dense" for n in merged)
    loaded = load_compressed(folder)
    modules = dict(loaded.model.named_modules())
    assert all(type(modules[n]) is nn.Linear for n in merged)
    torch.testing.assert_close(logits(loaded), before, rtol=1e-4, atol=1e-4)
    assert load_info(folder).speed["layers"].keys() == small.model.lowrank_info.speed["layers"].keys()


def test_save_compressed_times_layers_when_asked(tiny_bert, tmp_path):
    small = compress(tiny_bert, 0.5)
    folder = save_compressed(small, tmp_path / "s", speed=SpeedSettings(batch=2, compile=False, budget_s=0.05))
    recorded = load_info(folder).speed["layers"]  # the real timer (tiny shapes: milliseconds)
    assert recorded.keys() == set(compress(tiny_bert, 0.5).model.lowrank_info.ranks)
    for entry in recorded.values():
        assert set(entry["seconds"]) == {"factorized", "dense"} and all(t > 0 for t in entry["seconds"].values())
        assert entry["form"] == min(entry["seconds"], key=entry["seconds"].get)


def test_compiled_form_runs_and_matches(tiny_llama):
    small = compress(tiny_llama, 0.5)
    before = logits(small)
    timer = lambda form, name, run: {"compiled": 0.1, "factorized": 1.0, "dense": 2.0}[form]  # noqa: E731
    speed = optimize_speed(small, SpeedSettings(compile=True), timer=timer)
    if not any(e["form"] == "compiled" for e in speed["layers"].values()):
        pytest.skip("torch.compile is not usable on this machine")
    torch.testing.assert_close(logits(small), before, rtol=1e-4, atol=1e-4)


def test_bad_speed_settings_are_refused():
    with pytest.raises(ValueError, match="batch must be a positive whole number"):
        SpeedSettings(batch=0)


def test_cli_compress_speed_batch_then_evaluate_throughput(capsys, tiny_llama_dir, tmp_path, seed_lee, monkeypatch):
    seed_lee(tmp_path / "cache")
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fast"
    code, stdout, err = run(
        capsys, "compress", "--model", tiny_llama_dir, "--keep", "0.5", "--speed-batch", "2", "--out", out, "--json"
    )
    assert code == 0, err
    record = json.loads(stdout)
    speed = load_info(out).speed
    assert speed["batch"] == 2 and speed["length"] == 1 and speed["layers"]
    assert sum(int(part.split(": ")[1]) for part in record["forms"].split(", ")) == len(speed["layers"])
    code, stdout, err = run(
        capsys, "evaluate", "--model", out, "--limit", "1", "--throughput", "--throughput-length", "16", "--json"
    )
    assert code == 0, err
    record = json.loads(stdout)
    assert record["decode_b1_tokens_s"] > 0 and record["prefill_b8_vs_dense"] > 0  # against the dense base
    assert "KV cache" in record["throughput_note"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--speed-length", "4"], "--speed-length applies only with --speed-batch"),
        (["--speed-batch", "0"], "--speed-batch"),
        (["--speed-batch", "2", "--sequential", "--out", "x"], "does not apply to --sequential"),
        (["--align", "0"], "--align"),
    ],
)
def test_cli_speed_and_align_errors_are_one_line(capsys, tiny_llama_dir, argv, needle):
    code, _, err = run(capsys, "compress", "--model", tiny_llama_dir, *argv)
    assert_clear_error(code, err, needle)


def test_a_speed_record_naming_an_unknown_form_is_refused(tiny_bert, tmp_path):
    from lowrank.models.errors import ModelLoadError

    folder = save_compressed(compress(tiny_bert, 0.5), tmp_path / "s")
    data = json.loads((folder / "lowrank.json").read_text())
    data["speed"] = {"layers": {next(iter(data["ranks"])): {"form": "turbo"}}}
    (folder / "lowrank.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="speed.layers.*must be one of factorized, compiled, dense"):
        load_compressed(folder)
