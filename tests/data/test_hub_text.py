"""Hub text datasets (hf:<id>[:<config>][#<column>]) as corpora: the text column and the dataset's own splits; offline
and not cached, a one-line error at once (no traceback, no hang)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from lowrank import load_task
from lowrank.data import hub_text
from lowrank.data.tasks import TaskError
from tests.robustness.cli_errors import assert_clear_error

ROOT = Path(__file__).resolve().parents[2]

ROWS = {
    "train": [{"text": f"train line {i}", "title": f"t{i}"} for i in range(6)] + [{"text": "  ", "title": "blank"}],
    "validation": [{"text": "validation line", "title": "v"}, {"text": "", "title": "empty"}],
    "test": [{"text": "test line one", "title": "x"}, {"text": "test line two", "title": "y"}],
}


@pytest.fixture()
def local_hub(tmp_path, monkeypatch):
    """``datasets.load_dataset(id, config)`` answered from JSON files in ``tmp_path`` (per id and config), as the
    hub would answer it; records the calls and whether they ran in offline mode."""
    calls = []
    real = datasets.load_dataset

    def load(path, config=None):
        calls.append((path, config, datasets.config.HF_HUB_OFFLINE))
        folder = tmp_path / path.replace("/", "__") / (config or "default")
        if not folder.is_dir():
            raise FileNotFoundError(f"Dataset {path} is not cached in {tmp_path}")
        return real("json", data_files={split: str(folder / f"{split}.jsonl") for split in ROWS})

    for path, config in (("org/corpus", "small"), ("plain", None)):
        folder = tmp_path / path.replace("/", "__") / (config or "default")
        folder.mkdir(parents=True)
        for split, rows in ROWS.items():
            (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    monkeypatch.setattr(hub_text.datasets, "load_dataset", load)
    monkeypatch.setattr(hub_text, "hub_reachable", lambda: True)
    return calls


def test_a_hub_dataset_gives_its_text_column_in_its_own_splits(local_hub):
    task = load_task("hf:org/corpus:small")
    assert local_hub == [("org/corpus", "small", False)]
    assert (task.name, task.kind, task.labels, task.source) == ("hf:org/corpus:small", "lm", None, "datasets")
    assert task.texts == {
        "train": [f"train line {i}" for i in range(6)],  # blank rows dropped
        "validation": ["validation line"],
        "test": ["test line one", "test line two"],
    }
    assert task.meta == {"dataset": "org/corpus", "config": "small", "column": "text"}
    assert load_task("hf:plain#title").texts["validation"] == ["v", "empty"]


def test_hub_dataset_names_and_columns_are_checked(local_hub):
    with pytest.raises(TaskError, match="no column 'body'; it has text, title"):
        load_task("hf:plain#body")
    for bad in ("hf:", "hf::cfg", "hf:plain:"):
        with pytest.raises(TaskError, match=r"hf:<dataset id>\[:<config>\]"):
            load_task(bad)
    with pytest.raises(TaskError, match="could not load hf:missing through `datasets`"):
        load_task("hf:missing")


def test_offline_reads_only_the_local_cache(local_hub, monkeypatch):
    monkeypatch.setattr(hub_text, "hub_reachable", lambda: False)
    assert load_task("hf:org/corpus:small").texts["validation"] == ["validation line"]  # cached: loads
    assert local_hub[-1] == ("org/corpus", "small", True)  # in offline mode
    with pytest.raises(TaskError, match="hf:missing needs the hub .* not in the local datasets cache") as err:
        load_task("hf:missing")
    assert "\n" not in str(err.value)


def test_offline_and_not_cached_is_a_one_line_cli_error_at_once(tmp_path, tiny_llama_dir):
    """The real ``datasets``, no patching: HF_HUB_OFFLINE set and an empty cache."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "LOWRANK_CACHE": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "lowrank", "evaluate", "--model", str(tiny_llama_dir)]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--task", "hf:wikitext:wikitext-2-raw-v1", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert time.perf_counter() - start < 60
    assert_clear_error(done.returncode, done.stderr, "error: hf:wikitext:wikitext-2-raw-v1 needs the hub")
