"""Shared fixtures: tiny BERT / Llama models saved as real checkpoints, and small local tasks."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from lowrank.experiments import jobs

os.environ.setdefault("LOWRANK_OFFLINE", "1")  # tests never probe the hub
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# The cache of whoever runs the tests (as lowrank.files.cache.cache_dir reads it), before any test points LOWRANK_CACHE elsewhere.
USER_CACHE = Path(os.environ.get("LOWRANK_CACHE", Path.home() / ".cache" / "lowrank")).expanduser().resolve()
# The whole session, its subprocesses and any thread a test leaves running use a cache of their own: nothing a test does
# reaches the user's run store, statistics or models. The downloaded packages (assets, wheels) are shared, read-only use.
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="lowrank-test-cache-"))
for shared in ("assets", "wheels"):
    (USER_CACHE / shared).mkdir(parents=True, exist_ok=True)
    (SESSION_CACHE / shared).symlink_to(USER_CACHE / shared, target_is_directory=True)
os.environ["LOWRANK_CACHE"] = str(SESSION_CACHE)
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)  # removes the links, never what they point to


@pytest.fixture(autouse=True, scope="session")
def no_background_job_in_the_users_cache():
    """A test may start background builds and sweeps only in a cache of its own: one that reached the user's run store
    once fine-tuned the real minilm-rt for minutes behind the test run (regression). For the whole session, so that a
    thread a test leaves running (a dashboard script past its timeout, its LOWRANK_CACHE restored) is guarded too."""

    def guarded(args, log, spawn=jobs.spawn):  # every background job starts here (jobs.Job.launch)
        db = Path(args[args.index("--db") + 1]).resolve()
        if db.parent == USER_CACHE:  # the run store of that cache
            # an OSError, as a process that cannot start: the job ends "failed" saying why instead of running
            raise PermissionError(f"a test started a background job in the user's cache ({db}): set LOWRANK_CACHE")
        return spawn(args, log)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "spawn", guarded)
        yield


POSITIVE = [
    "a good film",
    "great acting and a fine story",
    "wonderful, moving and funny",
    "I loved it",
    "a delight",
    "brilliant work",
    "superb and warm",
    "charming and clever",
    "a joy to watch",
    "beautifully made",
]
NEGATIVE = [
    "a bad film",
    "awful acting and a dull story",
    "boring, flat and silly",
    "I hated it",
    "a mess",
    "terrible work",
    "weak and cold",
    "tedious and stupid",
    "a pain to watch",
    "badly made",
]


def _tokenizer():
    from transformers import AutoTokenizer

    from lowrank.assets import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer()


def sentiment_frame(repeats: int = 4) -> pd.DataFrame:
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    return pd.DataFrame(rows * repeats, columns=["text", "label"])


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    sentiment_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer BERT classifier of width 64 saved with safetensors and MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = BertForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer BERT encoder without a classification head (like ``minilm``)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _save_causal_lm(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tok = _tokenizer()
    tok.eos_token = tok.sep_token
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama causal LM of width 64 (MiniLM's word-piece tokenizer, [SEP] as EOS)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_causal_lm(LlamaForCausalLM(config), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tied_llama_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama with its LM head tied to the embedding (smollm2's layout), saved as one model.safetensors;
    ``save_compressed`` of it stores that matrix once, under the head's name."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaForCausalLM.from_pretrained(tiny_llama_dir).config
    config.tie_word_embeddings = True
    folder = tmp_path_factory.mktemp("tied-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer GPT-2 of width 64: its projections are ``Conv1D`` modules, not ``nn.Linear``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_causal_lm(GPT2LMHeadModel(config), tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Qwen2 causal LM of width 64 (the Llama row of the architecture table, with q/k/v biases)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_causal_lm(Qwen2ForCausalLM(config), tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def lee_file() -> Path:
    """The offline Lee corpus (lowrank.assets, in the cache the session started with; fetched once if missing)."""
    from lowrank.assets import GENSIM_WHEEL, wheel_member

    try:
        return wheel_member(*GENSIM_WHEEL)
    except Exception as err:  # no package index reachable and not cached
        pytest.skip(f"the Lee corpus is not available offline: {err}")


@pytest.fixture()
def seed_lee(lee_file):
    """``seed_lee(cache)`` puts the Lee corpus into another cache folder (a test's ``LOWRANK_CACHE``), where
    ``lowrank.assets`` looks for it, so the text task loads offline there."""
    from lowrank.assets import GENSIM_WHEEL

    def seed(cache: Path) -> None:
        dest = Path(cache) / "assets" / f"{GENSIM_WHEEL[0]}-{GENSIM_WHEEL[1]}" / GENSIM_WHEEL[2]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(lee_file).read_bytes())

    return seed


@pytest.fixture()
def tiny_bert(tiny_bert_dir):
    from lowrank import load_model

    return load_model(str(tiny_bert_dir))


@pytest.fixture()
def tiny_llama(tiny_llama_dir):
    from lowrank import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def text_task():
    from lowrank.data.tasks import Task

    docs = [" ".join(POSITIVE + NEGATIVE)] * 6
    return Task("toy-text", "lm", {"train": docs[:4], "validation": docs[4:5], "test": docs[5:]})


def _fake_runs(store, model: str, task: str, label: str, values: dict, ranks=None) -> int:
    """A finished sweep ``label`` with a dense run and one run per method at the given accuracies."""
    import lowrank
    from lowrank.experiments.run import run_fields
    from lowrank.experiments.sweep import SweepSpec

    spec = SweepSpec(
        model=model, task=task, methods=[m for m in values if m != "dense"], budgets=[0.5], label=label, ranks=ranks
    )
    sweep_id = store.create_sweep(spec.to_dict(), label=label, runs_total=len(values))
    fields = run_fields(lowrank.load_model(model, task=task), task, "validation", None)
    for method, value in values.items():
        run_id = store.start_run(
            **fields,
            sweep_id=sweep_id,
            method=method,
            strategy="uniform",
            ranks=ranks or {},
            options={},
            budget=1.0 if method == "dense" else 0.5,
        )
        store.finish_run(
            run_id,
            metric="accuracy",
            value=value,
            params_linear=10_000 if method == "dense" else 5_000,
            kept_fraction=1.0 if method == "dense" else 0.5,
            size_bytes=1000,
            latency_ms_b1=1.0,
        )
    store.end_sweep(sweep_id, "done", message=f"{len(values)} run(s) done")
    return sweep_id


@pytest.fixture()
def fake_runs():
    """``fake_runs(store, model, task, label, {method: accuracy}, ranks=None)``: a finished sweep of stored runs."""
    return _fake_runs
