"""Perplexity protocols: per-document and fixed windows equal a hand computation; the protocol is printed with the
number, stored with the run, and runs are compared only under the same protocol."""

import math

import pytest
import torch

from lowrank import evaluate
from lowrank.cli.main import main
from lowrank.data.tasks import Task, TaskError
from lowrank.evaluation import perplexity
from lowrank.evaluation.perplexity import default_window, protocol_text
from lowrank.experiments.compare import comparable, reference_run
from lowrank.experiments.run import dense_reference, run_fields
from lowrank.experiments.store import RunStore

DOCS = [
    "a bad film with awful acting",
    "a fine and moving story, well told and warmly acted from the first scene to the last one",
    "boring",
]


@pytest.fixture()
def corpus():
    return Task("three-docs", "lm", {"train": DOCS, "validation": DOCS, "test": DOCS})


def _token_nll(model, ids: list[int]) -> list[float]:
    """``-log p(ids[t] | ids[:t])`` for t >= 1, by a forward pass of the whole sequence (float64)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return [-float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_per_document_perplexity_is_exp_of_total_nll_over_predicted_tokens(tiny_llama, corpus):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    nll = []
    for doc in DOCS:
        nll += _token_nll(model, [start, *_ids(tok, doc), tok.eos_token_id])  # every token and the end predicted
    expected = math.exp(sum(nll) / len(nll))
    result = evaluate(tiny_llama, corpus, protocol="per-document", latency=False)
    assert result.examples == len(nll) == sum(len(_ids(tok, d)) + 1 for d in DOCS)
    assert result.value == pytest.approx(expected, rel=1e-5)
    assert result.protocol == protocol_text("per-document", 256) and result.protocol.startswith("per-document")


def test_a_long_document_is_cut_into_windows_that_predict_every_token_once(tiny_llama, corpus):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    window, nll = 5, []
    for doc in DOCS:
        ids = [start, *_ids(tok, doc), tok.eos_token_id]
        for i in range(0, len(ids) - 1, window - 1):  # windows overlap by one token: its context
            nll += _token_nll(model, ids[i : i + window])
    result = evaluate(tiny_llama, corpus, protocol="per-document", max_length=window, batch_size=3, latency=False)
    assert result.examples == len(nll) == sum(len(_ids(tok, d)) + 1 for d in DOCS)
    assert result.value == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)


def test_batching_and_padding_do_not_change_a_perplexity(tiny_llama, corpus, monkeypatch):
    one = evaluate(tiny_llama, corpus, protocol="per-document", batch_size=1, latency=False)
    monkeypatch.setattr(perplexity, "TOKENS_PER_BATCH", 40)  # padded batches of a few documents each
    assert [len(g) for g in perplexity._batches([[0] * 8, [0] * 8, [0] * 30, [0] * 5], None)] == [2, 1, 1]
    packed = evaluate(tiny_llama, corpus, protocol="per-document", latency=False)
    assert (packed.value, packed.examples) == (pytest.approx(one.value, rel=1e-6), one.examples)


def test_windows_perplexity_cuts_the_concatenated_split_into_fixed_windows(tiny_llama, corpus):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    stream = [t for doc in DOCS for t in [*_ids(tok, doc), tok.eos_token_id]]
    window = 8
    n = len(stream) // window  # the last partial window is dropped
    nll = [x for i in range(n) for x in _token_nll(model, stream[i * window : (i + 1) * window])]
    result = evaluate(tiny_llama, corpus, protocol="windows", max_length=window, latency=False)
    assert result.examples == n * (window - 1) == len(nll)
    assert result.value == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert result.protocol == protocol_text("windows", window)
    with pytest.raises(TaskError, match="fewer than 256 tokens"):
        evaluate(tiny_llama, corpus, protocol="windows", latency=False)  # default: the model's 256-token context


def test_the_default_window_is_2048_tokens_or_the_model_context(tiny_llama):
    assert default_window(tiny_llama.model) == 256  # the tiny Llama's max_position_embeddings
    config = tiny_llama.model.config
    old = config.max_position_embeddings
    try:
        config.max_position_embeddings = 8192
        assert default_window(tiny_llama.model) == 2048
    finally:
        config.max_position_embeddings = old


def test_an_unknown_protocol_is_refused(tiny_llama, corpus):
    with pytest.raises(ValueError, match="protocol must be one of windows, per-document"):
        evaluate(tiny_llama, corpus, protocol="sliding", latency=False)


def test_the_cli_prints_the_protocol_beside_the_perplexity(tiny_llama_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS * 10), encoding="utf-8")
    base = ["evaluate", "--model", str(tiny_llama_dir), "--task", str(corpus), "--json", "--threads", "1"]
    assert main([*base, "--protocol", "per-document"]) == 0
    out = capsys.readouterr().out
    assert '"metric": "perplexity"' in out and '"protocol": "per-document (each document scored on its own' in out
    assert main([*base[:-3], "--window", "16", "--split", "train"]) == 0
    assert "windows of 16 tokens" in capsys.readouterr().out
    assert main([*base, "--protocol", "rolling"]) == 2
    assert "--protocol" in capsys.readouterr().err


def test_runs_are_compared_only_under_the_same_protocol(tiny_llama, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    longer = Task("toy", "lm", {"validation": DOCS * 20})
    dense = dense_reference(store, tiny_llama, longer, "toy", "validation")
    assert (
        dense["protocol"]
        == run_fields(tiny_llama, "toy", "validation", None)["protocol"]
        == protocol_text("windows", 256)
    )
    other = {**run_fields(tiny_llama, "toy", "validation", None), "protocol": protocol_text("per-document", 256)}
    for protocol in (dense["protocol"], other["protocol"]):
        run = store.start_run(**{**other, "protocol": protocol}, method="svd", budget=0.5)
        store.finish_run(run, metric="perplexity", value=1.0)
    runs = store.runs(status="done", method="svd")
    assert comparable(runs, dense)["protocol"].tolist() == [dense["protocol"]]
    assert reference_run(store, "toy", model=tiny_llama.name, protocol=other["protocol"]) is None
    assert reference_run(store, "toy", model=tiny_llama.name, protocol=dense["protocol"])["id"] == dense["id"]


def test_runs_stored_before_the_protocol_column_get_the_protocol_they_were_measured_with(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT, metric TEXT, value REAL)")
        conn.executemany(
            "INSERT INTO runs (status, metric, value) VALUES (?, ?, ?)",
            [("done", "perplexity", 30.0), ("done", "accuracy", 0.8), ("failed", None, None)],
        )
    rows = RunStore(path).runs().sort_values("id")
    assert rows["protocol"].tolist()[:2] == [protocol_text("windows", 256), "per example (texts cut at 128 tokens)"]
    assert rows["protocol"].isna().tolist()[2]
