"""Layer-sequential compression: equal to the in-memory run, sharded atomic output, refusals, CLI, peak memory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import lowrank.sequential
from lowrank import compress, compress_in_blocks, compress_sequential, get_method, load_compressed, load_model
from lowrank.cli.main import main
from lowrank.compress import factorize_layer
from lowrank.data import load_task
from lowrank.methods import with_compensation
from lowrank.methods.compensated import ALPHA, VALIDATE
from lowrank.models import ModelLoadError
from lowrank.models.families.llama import DECODER as LLAMA
from lowrank.models.loading import load_config
from lowrank.models.shards import INDEX, Checkpoint
from lowrank.models.streamed import StreamedModel
from lowrank.sequential import sequential_reason
from lowrank.statistics import StatisticsSettings, statistics_for
from lowrank.statistics.blockwise import forward_sweep, gradient_sweep, sample

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = StatisticsSettings(num_batches=2, batch_size=2, max_length=16)
METHODS = ["svd", "asvd", "svd_llm", "fwsvd", "tfwsvd", "kfac_svd"]


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory, tiny_llama_dir) -> Path:
    """A 3-block Llama of width 64 saved by transformers as several shards with an index."""
    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    config = base.config
    config.num_hidden_layers = 3
    folder = tmp_path_factory.mktemp("sharded-llama")
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="1MB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, folder / name)
    assert (folder / INDEX).exists()
    return folder


@pytest.fixture(scope="module")
def tied_llama(tied_llama_dir) -> Path:
    """The tied tiny Llama (tests/conftest.py), saved as one model.safetensors."""
    assert not (tied_llama_dir / INDEX).exists()
    return tied_llama_dir


def in_memory(folder, method, task, settings=SETTINGS, **options):
    loaded = load_model(str(folder))
    stats = statistics_for(loaded, task, get_method(method).needs, settings, use_cache=False)
    return compress(loaded, 0.5, method, stats=stats, **options)


def logit_gap(a, b, vocab: int) -> float:
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a.model(ids).logits - b.model(ids).logits).abs().max())


@pytest.mark.parametrize("method", METHODS)
def test_sequential_output_equals_in_memory(method, sharded_llama, text_task, tmp_path):
    ref = in_memory(sharded_llama, method, text_task)
    out = compress_sequential(sharded_llama, 0.5, method, tmp_path / "out", text_task, SETTINGS, inputs="dense")
    back = load_compressed(out)
    assert logit_gap(ref, back, ref.model.config.vocab_size) < 1e-5
    assert back.model.lowrank_info.ranks == ref.model.lowrank_info.ranks
    assert set(back.model.lowrank_info.details) == set(ref.model.lowrank_info.ranks)
    index = json.loads((out / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 4  # resident modules + one shard per block
    assert not (out / lowrank.sequential.WORKDIR).exists()


def test_both_paths_factorize_each_layer_with_the_one_factorize_layer(sharded_llama, text_task, tmp_path, monkeypatch):
    calls = {"in memory": [], "sequential": []}

    def spy(path):
        def counted(name, dense, rank, info, stats=None, options=None):
            calls[path].append((name, rank))
            return factorize_layer(name, dense, rank, info, stats, options)

        return counted

    assert lowrank.sequential.factorize_layer is factorize_layer
    monkeypatch.setattr(lowrank.sequential, "factorize_layer", spy("sequential"))
    out = compress_sequential(sharded_llama, 0.5, "svd", tmp_path / "out", text_task, SETTINGS)
    monkeypatch.setattr(sys.modules["lowrank.compress"], "factorize_layer", spy("in memory"))
    ref = in_memory(sharded_llama, "svd", text_task)
    back = load_compressed(out)
    assert calls["sequential"] == calls["in memory"] == list(ref.model.lowrank_info.ranks.items())
    for name, _ in calls["sequential"]:
        streamed, held = back.model.get_submodule(name), ref.model.get_submodule(name)
        assert torch.equal(streamed.U, held.U) and torch.equal(streamed.V, held.V)
    info = back.model.lowrank_info
    assert set(info.seconds) == set(info.details) == set(ref.model.lowrank_info.details)
    assert info.sequential == {"statistics": "none", "examples": 0, "blocks": 3}


def test_streamed_statistics_equal_in_memory(sharded_llama, text_task, tmp_path):
    loaded = load_model(str(sharded_llama))
    needs = ("fisher", "activations", "gradients")
    ref = statistics_for(loaded, text_task, needs, SETTINGS, use_cache=False)
    stream = StreamedModel(load_config(str(sharded_llama), "tiny", True), Checkpoint(sharded_llama), LLAMA)
    stream.load_resident()
    batches = sample(load_task(text_task), loaded.tokenizer, SETTINGS)
    streamed = {}
    for step in gradient_sweep(stream, batches, list(ref), needs, tmp_path / "hidden"):
        assert all(name.startswith(f"model.layers.{step.index}.") for name in step.stats)
        streamed.update(step.stats)
    assert not (tmp_path / "hidden").exists()
    forward = {}
    for step in forward_sweep(stream, batches, list(ref), ("activations",), inputs="dense"):
        forward.update(step.stats)
    assert set(streamed) == set(forward) == set(ref)
    for name, tensors in ref.items():
        assert set(streamed[name]) == {"fisher", "input_moment", "input_abs_mean", "grad_moment"}
        for key, expected in tensors.items():
            assert (streamed[name][key] - expected).abs().max() <= 1e-5 * expected.abs().max()
            if key in forward[name]:
                assert (forward[name][key] - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_compressed_inputs_fit_each_block_to_the_compressed_ones_before_it(sharded_llama, text_task, tmp_path):
    ref = in_memory(sharded_llama, "svd_llm", text_task)
    out = compress_sequential(sharded_llama, 0.5, "svd_llm", tmp_path / "out", text_task, SETTINGS)
    assert (
        json.loads((out / "lowrank.json").read_text())["sequential"]["statistics"]
        == "forward sweep (compressed inputs)"
    )
    back = load_compressed(out)

    def product(model, name):
        layer = model.get_submodule(name)
        return (layer.U @ layer.V).detach()

    first, last = "model.layers.0.mlp.down_proj", "model.layers.2.mlp.down_proj"
    assert torch.allclose(
        product(back.model, first), product(ref.model, first), atol=1e-5
    )  # same inputs: the embeddings
    assert not torch.allclose(product(back.model, last), product(ref.model, last), atol=1e-4)


@pytest.mark.parametrize("fixture", ["tied_llama", "tiny_qwen2_dir"])
def test_single_file_checkpoints_tied_heads_and_qwen2(fixture, request, text_task, tmp_path):
    folder = request.getfixturevalue(fixture)
    ref = in_memory(folder, "svd_llm", text_task)
    out = compress_sequential(folder, 0.5, "svd_llm", tmp_path / "out", text_task, SETTINGS, inputs="dense")
    back = load_compressed(out)
    assert logit_gap(ref, back, ref.model.config.vocab_size) < 1e-5
    if fixture == "tied_llama":
        assert "lm_head.weight" not in json.loads((out / INDEX).read_text())["weight_map"]
        assert back.model.lm_head.weight.data_ptr() == back.model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_an_interrupted_run_leaves_no_folder(method, sharded_llama, text_task, tmp_path):
    def stop(done, total, message):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_sequential(sharded_llama, 0.5, method, tmp_path / "out", text_task, SETTINGS, progress=stop)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling (with the hidden states)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"method": "sparsity_aware"}, "cannot compute mask statistics"),
        ({"method": "svd_llm", "task": None}, "needs statistics from calibration data"),
        ({"method": "fwsvd", "task": "sentiment"}, "need a language-modelling task"),
        ({"inputs": "later"}, "inputs must be one of"),
        ({"out": None}, "pass out="),
        ({"method": "nope"}, "unknown factorization method"),
        ({"ranks": {"nope": 3}}, "not compressible"),
        ({"method": "svd", "solver": "als"}, "unknown option"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_work(
    changes, match, sharded_llama, text_task, sentiment_csv, tmp_path
):
    kwargs = {"ranks": 0.5, "method": "svd_llm", "out": tmp_path / "out", "task": text_task} | changes
    if kwargs["task"] == "sentiment":
        kwargs["task"] = str(sentiment_csv)
    with pytest.raises(ValueError, match=match) as err:
        compress_sequential(sharded_llama, settings=SETTINGS, **kwargs)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_encoders_and_incomplete_checkpoints_are_refused(tiny_bert_dir, sharded_llama, tmp_path):
    with pytest.raises(ModelLoadError, match="compresses causal LMs"):
        compress_sequential(tiny_bert_dir, 0.5, "svd", tmp_path / "out")
    broken = tmp_path / "broken"
    shutil.copytree(sharded_llama, broken)
    index = json.loads((broken / INDEX).read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (broken / INDEX).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="no tensor model.layers.1.mlp.up_proj.weight"):
        compress_sequential(broken, 0.5, "svd", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_size_threshold_decides_in_one_place(sharded_llama, tiny_bert_dir, monkeypatch, tmp_path):
    assert sequential_reason(sharded_llama) is None  # a few MB: in memory
    monkeypatch.setattr(lowrank.sequential, "available_ram_bytes", lambda: 1_000_000)
    assert "one decoder block at a time" in sequential_reason(sharded_llama)
    assert sequential_reason(tiny_bert_dir) is None  # not a causal LM
    out = compress_sequential(sharded_llama, 0.5, "svd", tmp_path / "out")
    assert sequential_reason(out) is None  # already compressed


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sequential_flag_and_automatic_mode(capsys, sharded_llama, monkeypatch, tmp_path):
    code, out, err = run(
        capsys,
        "compress",
        "--model",
        str(sharded_llama),
        "--keep",
        "0.5",
        "--sequential",
        "--out",
        str(tmp_path / "a"),
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["out"] == str(tmp_path / "a") and record["layers"] == 21 and "notice" not in err
    assert load_compressed(tmp_path / "a").model.lowrank_info.method == "svd"
    code, out, err = run(capsys, "compress", "--model", str(sharded_llama), "--keep", "0.5", "--json")  # in memory
    assert code == 0 and "notice" not in err and "sequential" not in json.loads(out)
    code, _, err = run(capsys, "compress", "--model", str(sharded_llama), "--sequential")
    assert code == 2 and err.startswith("error:") and "--out" in err and err.count("\n") == 1
    monkeypatch.setattr(lowrank.sequential, "available_ram_bytes", lambda: 1_000_000)
    code, out, err = run(capsys, "compress", "--model", str(sharded_llama), "--out", str(tmp_path / "b"), "--json")
    assert code == 0 and "notice:" in err and "one decoder block at a time" in err
    assert (tmp_path / "b" / INDEX).exists()


# --- peak memory on a synthetic model of at least 1.5 GB ------------------------------------------------------

BIG = {"hidden": 256, "intermediate": 704, "layers": 640, "per_shard": 40}  # 2.06e9 bytes (1.92 GiB) in float32
SMALL = BIG | {"layers": 2}  # the same config, two blocks
# asvd: the forward sweep and collectors of svd_llm with an SVD-cost factorization, ~3 min on one core. svd_llm
# passes too (peak 628 MiB = 32% of this model) but takes ~8 min: its float64 whitening costs ~0.5 s per block here.
BIG_METHOD = "asvd"
# The child's own peak RSS is VmHWM: getrusage's ru_maxrss survives exec and would include the parent's.
CHILD = """
import json, re, sys
from pathlib import Path
from lowrank.data.tasks import Task
from lowrank.sequential import compress_sequential
from lowrank.statistics import StatisticsSettings
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
folder, out, method, docs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
imported = peak_kib()
task = Task("toy-text", "lm", {"train": docs, "validation": docs[:1], "test": docs[:1]})
compress_sequential(folder, 0.5, method, out, task, StatisticsSettings(num_batches=1, batch_size=2, max_length=32))
print(json.dumps({"imported_kib": imported, "peak_kib": peak_kib()}))
"""


def word_tokenizer(texts) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``texts``' words: a vocabulary of a few dozen tokens."""
    split = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def random_llama(folder: Path, texts, hidden: int, intermediate: int, layers: int, per_shard: int) -> int:
    """Write a random Llama (tied head, 64-token vocabulary) shard by shard, never whole in memory; returns its bytes."""
    folder.mkdir(parents=True)
    tokenizer = word_tokenizer(texts)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=True,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=2,
        architectures=["LlamaForCausalLM"],
    )
    assert len(tokenizer) <= config.vocab_size
    config.save_pretrained(folder)
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }
    groups = [range(start, min(start + per_shard, layers)) for start in range(0, layers, per_shard)]
    generator = torch.Generator().manual_seed(0)
    files, total = {}, 0
    for shard in range(len(groups) + 1):
        if shard == 0:
            tensors = {
                "model.embed_tokens.weight": torch.randn(64, hidden, generator=generator),
                "model.norm.weight": torch.ones(hidden),
            }
        else:
            tensors = {}
            for i in groups[shard - 1]:
                for name, (rows, cols) in shapes.items():
                    tensors[f"model.layers.{i}.{name}.weight"] = (
                        torch.randn(rows, cols, generator=generator) * cols**-0.5
                    )
                for norm in ("input_layernorm", "post_attention_layernorm"):
                    tensors[f"model.layers.{i}.{norm}.weight"] = torch.ones(hidden)
        file = f"model-{shard + 1:05d}-of-{len(groups) + 1:05d}.safetensors"
        save_file(tensors, str(folder / file))
        files.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": files}))
    return total


def test_a_smaller_copy_of_the_big_config_equals_in_memory(text_task, tmp_path):
    random_llama(tmp_path / "small", text_task.texts["train"], **SMALL)
    settings = StatisticsSettings(num_batches=1, batch_size=2, max_length=32)
    for method in ("svd_llm", "asvd"):
        ref = in_memory(tmp_path / "small", method, text_task, settings)
        out = compress_sequential(
            tmp_path / "small", 0.5, method, tmp_path / method, text_task, settings, inputs="dense"
        )
        assert logit_gap(ref, load_compressed(out), 64) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_sequential_peak_memory_is_a_fraction_of_the_model(text_task, tmp_path):
    size = random_llama(tmp_path / "big", text_task.texts["train"], **BIG)
    assert size >= 1.5e9
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "LOWRANK_THREADS": "1",
        "LOWRANK_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "big"),
            str(tmp_path / "out"),
            BIG_METHOD,
            json.dumps(text_task.texts["train"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    peak = figures["peak_kib"] * 1024
    print(
        f"model {size / 2**30:.2f} GiB; peak RSS {peak / 2**20:.0f} MiB = {peak / size:.1%} of the model "
        f"({figures['imported_kib'] / 1024:.0f} MiB after imports)"
    )
    # What compressing adds above the interpreter and its imports (~500 MiB, which varies by machine, not by model):
    # one shard in, one block's statistics and factors out; in memory it would be more than the whole model.
    assert peak - figures["imported_kib"] * 1024 < 0.2 * size
    index = json.loads((tmp_path / "out" / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == BIG["layers"] + 1
    meta = json.loads((tmp_path / "out" / "lowrank.json").read_text())
    assert len(meta["ranks"]) == 7 * BIG["layers"] and meta["sequential"]["examples"] == 2


def test_compensated_runs_agree_in_memory_and_sequential(sharded_llama, text_task, tmp_path):
    loaded = load_model(str(sharded_llama))
    held = compress_in_blocks(loaded, 0.5, "svd_llm_compensated", text_task, SETTINGS)
    out = compress_sequential(sharded_llama, 0.5, "svd_llm_compensated", tmp_path / "out", text_task, SETTINGS)
    back = load_compressed(out)
    assert logit_gap(held, back, held.model.config.vocab_size) < 1e-5
    record = {"statistics": "forward sweep (compensated inputs)", "examples": 4, "blocks": 3}
    assert back.model.lowrank_info.sequential == held.model.lowrank_info.sequential == record
    plain = in_memory(sharded_llama, "svd_llm", text_task)
    on_compressed = load_compressed(
        compress_sequential(sharded_llama, 0.5, "svd_llm", tmp_path / "svd_llm", text_task, SETTINGS)
    )

    def product(model, name):
        layer = model.get_submodule(name)
        return (layer.U @ layer.V).detach()

    first, last = "model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"
    assert torch.allclose(product(held.model, first), product(plain.model, first), atol=1e-5)  # X_hat = X in block 0
    for other in (plain, on_compressed):  # later blocks: fitted to the dense outputs from the compressed inputs
        assert not torch.allclose(product(held.model, last), product(other.model, last), atol=1e-4)


def test_partial_compensation_spans_svd_llm_on_compressed_inputs_to_full_compensation(
    sharded_llama, text_task, tmp_path
):
    """alpha = 0 is SVD-LLM's sequential mode (each block whitened on the inputs of the compressed blocks before
    it), alpha = 1 full compensation; the record states the alpha and validation that ran, the defaults included,
    and each layer's validated multiplier of its correction."""
    loaded = load_model(str(sharded_llama))
    none = compress_in_blocks(loaded, 0.5, "svd_llm_compensated", text_task, SETTINGS, alpha=0.0)
    on_compressed = compress_in_blocks(loaded, 0.5, "svd_llm", text_task, SETTINGS)
    full = compress_in_blocks(loaded, 0.5, "svd_llm_compensated", text_task, SETTINGS, alpha=1.0)
    vocab = loaded.model.config.vocab_size
    assert logit_gap(none, on_compressed, vocab) < 1e-4
    assert logit_gap(none, full, vocab) > 1e-3
    assert none.model.lowrank_info.options == {"alpha": 0.0, "validate": VALIDATE}
    multipliers = [facts["correction_multiplier"] for facts in full.model.lowrank_info.details.values()]
    assert len(multipliers) == len(full.model.lowrank_info.ranks) and all(0 <= m <= 1 for m in multipliers)
    default = compress_in_blocks(loaded, 0.5, "svd_llm_compensated", text_task, SETTINGS)
    assert default.model.lowrank_info.options == {"alpha": ALPHA, "validate": VALIDATE}
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        compress_in_blocks(loaded, 0.5, "svd_llm_compensated", text_task, SETTINGS, alpha=2.0)


def test_compensated_statistics_only_come_from_the_block_sweep(sharded_llama, text_task, tmp_path):
    loaded = load_model(str(sharded_llama))
    with pytest.raises(ValueError, match="compress_in_blocks") as err:
        compress(loaded, 0.5, "svd_llm_compensated")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="only the block sweep"):
        statistics_for(loaded, text_task, ("compensation",), SETTINGS, use_cache=False)
    with pytest.raises(ValueError, match="only compensated inputs"):
        compress_sequential(sharded_llama, 0.5, "svd_llm_compensated", tmp_path / "a", text_task, inputs="dense")
    with pytest.raises(ValueError, match="no compensated inputs"):
        compress_in_blocks(loaded, 0.5, "svd_llm", text_task, SETTINGS, inputs="compensated")
    with pytest.raises(ValueError, match="pass a task"):
        compress_in_blocks(loaded, 0.5, "svd_llm_compensated")


def test_cli_compresses_a_compensated_method_in_memory_through_the_block_loop(
    capsys, sharded_llama, text_task, tmp_path
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text_task.texts["train"] * 3), encoding="utf-8")
    args = ["compress", "--model", str(sharded_llama), "--keep", "0.5", "--method", "svd_llm_compensated"]
    args += ["--task", str(corpus), "--batches", "2", "--batch-size", "2", "--out", str(tmp_path / "out"), "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["sequential"] == "forward sweep (compensated inputs)" and record["layers"] == 21
    assert load_compressed(tmp_path / "out").model.lowrank_info.method == "svd_llm_compensated"
    # the plain name with --compensate takes the compensated form's options
    args[args.index("svd_llm_compensated")] = "svd_llm"
    args[args.index(str(tmp_path / "out"))] = str(tmp_path / "half")
    code, out, err = run(capsys, *args, "--compensate", "--option", "alpha=0.5")
    assert code == 0, err
    info = load_compressed(tmp_path / "half").model.lowrank_info
    assert info.method == "svd_llm_compensated" and info.options == {"alpha": 0.5, "validate": VALIDATE}


def test_kfac_compensated_runs_agree_in_memory_and_sequential(sharded_llama, text_task, tmp_path):
    """kfac_svd_compensated: one dense gradient sweep, then the compensated forward sweep; in memory and block by
    block are one code path (agree to 1e-5); cached dense statistics in place of the gradient sweep give the same
    model up to summation order; block 0 (X_hat = X) is kfac_svd."""
    loaded = load_model(str(sharded_llama))
    held = compress_in_blocks(loaded, 0.5, "kfac_svd_compensated", text_task, SETTINGS)
    out = compress_sequential(sharded_llama, 0.5, "kfac_svd_compensated", tmp_path / "out", text_task, SETTINGS)
    back = load_compressed(out)
    vocab = held.model.config.vocab_size
    assert logit_gap(held, back, vocab) < 1e-5
    assert not (out / lowrank.sequential.WORKDIR).exists()  # the dense statistics and block inputs are gone
    statistics = "gradient sweep (dense model), then forward sweep (compensated inputs)"
    assert (
        back.model.lowrank_info.sequential["statistics"]
        == held.model.lowrank_info.sequential["statistics"]
        == statistics
    )
    calibration = back.model.lowrank_info.calibration
    assert calibration == held.model.lowrank_info.calibration and calibration["tokens"] == 4 * 16
    cached = statistics_for(loaded, text_task, ("gradients",), SETTINGS, use_cache=False)
    given = compress_in_blocks(loaded, 0.5, "kfac_svd_compensated", text_task, SETTINGS, stats=cached)
    assert logit_gap(held, given, vocab) < 1e-4
    kfac = in_memory(sharded_llama, "kfac_svd", text_task)
    first, last = "model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"

    def product(model, name):
        layer = model.get_submodule(name)
        return (layer.U @ layer.V).detach()

    assert torch.allclose(product(held.model, first), product(kfac.model, first), atol=1e-4)
    assert not torch.allclose(product(held.model, last), product(kfac.model, last), atol=1e-4)


def test_cli_compensate_flag_runs_the_compensated_form_in_memory_and_block_by_block(
    capsys, sharded_llama, text_task, tmp_path
):
    """--compensate picks svd_llm_compensated; with --sequential the compensated inputs are the default (a
    regression: the CLI passed inputs='compressed', which a compensated method refuses); the calibration sample
    is recorded and a small one is warned about."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text_task.texts["train"] * 3), encoding="utf-8")
    base = ["compress", "--model", str(sharded_llama), "--keep", "0.5", "--method", "svd_llm", "--compensate"]
    base += ["--task", str(corpus), "--calibration-tokens", "64", "--batch-size", "2", "--json"]
    for extra in ([], ["--sequential"]):
        code, out, err = run(capsys, *base, "--out", str(tmp_path / f"out{len(extra)}"), *extra)
        assert code == 0, err
        record = json.loads(out)
        assert record["method"] == "svd_llm_compensated"
        assert record["sequential"] == "forward sweep (compensated inputs)"
        info = load_compressed(tmp_path / f"out{len(extra)}").model.lowrank_info
        tokens = info.calibration["tokens"]  # 64 tokens round up to one batch of 2 blocks of 128
        assert tokens in (128, 256) and info.calibration["examples"] == tokens // 128
        assert record["calibration"] == f"{tokens} tokens of {corpus.stem}" or record["calibration"].startswith(
            f"{tokens} tokens"
        )
        assert "warning: the calibration sample is small" in err and info.method == "svd_llm_compensated"
    plain = [a for a in base if a != "--compensate"]
    for flag, method in (("--no-compensate", "svd_llm"), (None, with_compensation("svd_llm"))):  # None: the default
        out_dir = str(tmp_path / f"default-{flag}")
        code, out, err = run(capsys, *plain, "--out", out_dir, *([flag] if flag else []))
        assert code == 0, err
        assert json.loads(out)["method"] == method == load_compressed(out_dir).model.lowrank_info.method
