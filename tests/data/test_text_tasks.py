"""Text from anywhere: .txt and .jsonl corpora split by document, a classification task's texts as a corpus,
and the perplexity protocol named with every number."""

import json

import pytest

from lowrank import evaluate, load_task
from lowrank.data.tasks import TaskError, seeded_split
from lowrank.evaluation.perplexity import protocol_text

DOCS = [f"Document {i} opens here.\nIts second line {i}." for i in range(20)]


def test_txt_documents_are_blank_line_separated_paragraphs_split_80_10_10_by_seed(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n \n".join(DOCS) + "\n\n\n", encoding="utf-8")
    task = load_task(path)
    assert (task.name, task.kind, task.labels) == ("corpus", "lm", None)
    assert task.sizes() == {"train": 16, "validation": 2, "test": 2}
    for split, index in seeded_split(len(DOCS), 0).items():
        assert task.texts[split] == [DOCS[i] for i in index]  # a paragraph keeps its lines
    assert load_task(path).texts == task.texts
    assert load_task(path, seed=1).texts != task.texts


def test_jsonl_documents_are_text_fields_in_file_order(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": d}) for i, d in enumerate(DOCS)) + "\n\n", encoding="utf-8")
    task = load_task(str(path))
    txt = tmp_path / "same.txt"
    txt.write_text("\n\n".join(DOCS), encoding="utf-8")
    assert task.kind == "lm" and task.texts == load_task(txt).texts
    assert task.content_hash() == load_task(txt).content_hash()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("a.jsonl", '{"text": "fine"}\nnot json\n', "line 2 is not JSON"),
        ("b.jsonl", '{"text": "fine"}\n{"body": "x"}\n', "line 2 has no non-empty string field 'text'"),
        ("c.jsonl", '["text"]\n', "line 1 has no"),
        ("d.txt", "\n \n\n", "no documents"),
        ("e.txt", b"caf\xe9 au lait", "not UTF-8"),
    ],
)
def test_a_bad_text_file_is_a_one_line_error(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TaskError, match=match) as err:
        load_task(path)
    assert "\n" not in str(err.value)
    with pytest.raises(TaskError, match="not found"):
        load_task(tmp_path / "missing.txt")


def test_classification_texts_as_a_corpus_keep_the_task_splits(sentiment_csv):
    corpus = load_task("rotten_tomatoes:text", source="local")
    labelled = load_task("rotten_tomatoes", source="local")
    assert (corpus.name, corpus.kind, corpus.labels) == ("rotten_tomatoes:text", "lm", None)
    assert corpus.texts == labelled.texts and corpus.sizes() == {"train": 10202, "validation": 1275, "test": 1275}
    assert load_task(f"{sentiment_csv}:text").texts == load_task(sentiment_csv).texts
    with pytest.raises(TaskError, match="already a text task"):
        load_task("lee:text")
    with pytest.raises(TaskError, match="unknown task"):
        load_task("nope:text")


def test_every_perplexity_names_its_protocol(tiny_llama, text_task, tiny_bert, sentiment_csv):
    result = evaluate(tiny_llama, text_task, "validation", max_length=16, latency=False)
    assert result.protocol == protocol_text("windows", 16) and result.protocol.startswith("windows of 16 tokens")
    assert result.to_dict()["protocol"] == result.protocol
    assert evaluate(tiny_bert, sentiment_csv, latency=False).protocol.startswith("per example")
