"""`lowrank evaluate --harness`: lm-eval's scores of a dense or compressed model on a local task, printed and stored
as runs that compare like any other; a one-line error without lm-eval."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowrank
from lowrank.evaluation import harness
from lowrank.experiments.compare import DENSE, comparable, reference_run
from lowrank.experiments.store import RunStore
from tests.robustness.cli_errors import assert_clear_error, run

DOCS = [
    {"question": "The film was great. Sentiment:", "choices": ["positive", "negative"], "answer": 0},
    {"question": "The film was awful. Sentiment:", "choices": ["positive", "negative"], "answer": 1},
    {"question": "I loved every minute. Sentiment:", "choices": ["positive", "negative"], "answer": 0},
    {"question": "Dull and far too long. Sentiment:", "choices": ["good", "bad", "neither"], "answer": 1},
    {"question": "A fine cast in a weak story. Sentiment:", "choices": ["good", "bad", "neither"], "answer": 2},
]
TASK = "lowrank_toy_choice"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def local_task(tmp_path):
    """A custom lm-eval task: a YAML over a local JSON-lines file (multiple choice, accuracy)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "toy.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS), encoding="utf-8")
    (folder / "toy.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
        encoding="utf-8",
    )
    return folder


def _hand_accuracy(loaded) -> float:
    """Multiple-choice accuracy as lm-eval defines it: the choice whose tokens (after the question and a space) have
    the highest summed log-likelihood, computed here with one forward pass per choice."""
    tok, correct = loaded.tokenizer, 0
    for doc in DOCS:
        context = tok(doc["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tok(doc["question"] + " " + choice, add_special_tokens=False)["input_ids"]
            continuation = whole[len(context) :]
            with torch.no_grad():
                logits = loaded.model(input_ids=torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            scores.append(sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(continuation)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return correct / len(DOCS)


def test_harness_scores_of_dense_and_compressed_models_are_printed_stored_and_compared(
    tiny_llama_dir, tiny_llama, local_task, tmp_path, capsys
):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install '.[eval]'")
    store_path = tmp_path / "runs.sqlite"
    base = ["--harness", TASK, "--harness-include", local_task, "--store", store_path, "--threads", "1"]
    code, out, err = run(capsys, "evaluate", "--model", tiny_llama_dir, *base, "--json")
    assert code == 0, err
    (printed,) = json.loads(out)
    assert (printed["task"], printed["metric"], printed["examples"], printed["shots"]) == (TASK, "acc", 5, 0)
    assert printed["value"] == pytest.approx(_hand_accuracy(tiny_llama))
    assert printed["protocol"].startswith(f"lm-eval-harness {lm_eval.__version__}, task {TASK} version 1.0, 0-shot")

    small = lowrank.compress(tiny_llama, 0.5, method="svd")
    folder = lowrank.save_compressed(small, tmp_path / "small")
    code, out, err = run(capsys, "evaluate", "--model", folder, *base)
    assert code == 0, err
    assert TASK in out and "acc" in out and "lm-eval-harness" in out  # the table for people

    store = RunStore(store_path)
    key = f"harness:{TASK}:acc"
    dense = reference_run(store, key, model=str(tiny_llama_dir))
    assert dense is not None and dense["value"] == printed["value"] and dense["metric"] == "acc"
    assert dense["protocol"] == printed["protocol"] and dense["split"] == "test"
    runs = store.runs(task=key, status="done")
    compressed = comparable(runs[runs["method"] != DENSE], dense)
    assert compressed["method"].tolist() == ["svd"]
    row = compressed.iloc[0]
    assert row["model"] == str(tiny_llama_dir) and row["value"] == pytest.approx(_hand_accuracy(small))
    assert 0.4 < row["kept_fraction"] < 0.6 and row["budget"] == round(row["kept_fraction"], 2)
    assert row["strategy"] == harness.SAVED and row["output_dir"] == str(folder)


def test_harness_errors_are_one_line(tiny_llama_dir, tiny_bert_dir, local_task, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install '.[eval]'")
    store = ["--store", tmp_path / "runs.sqlite"]
    code, _, err = run(capsys, "evaluate", "--model", tiny_llama_dir, "--harness", "no_such_task_x", *store)
    assert_clear_error(code, err, "unknown lm-eval task(s) no_such_task_x")
    code, _, err = run(capsys, "evaluate", "--model", tiny_bert_dir, "--harness", TASK, *store)
    assert_clear_error(code, err, "not a causal language model")
    code, _, err = run(capsys, "evaluate", "--model", tiny_llama_dir, "--harness", " , ", *store)
    assert_clear_error(code, err, "at least one lm-eval task")


def test_without_lm_eval_the_harness_is_a_one_line_error_naming_the_extra(
    tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    real = harness.importlib.import_module

    def without_lm_eval(name, *args):
        if name.split(".")[0] == "lm_eval":
            raise ModuleNotFoundError(f"No module named {name!r}", name="lm_eval")
        return real(name, *args)

    monkeypatch.setattr(harness.importlib, "import_module", without_lm_eval)
    code, _, err = run(
        capsys, "evaluate", "--model", tiny_llama_dir, "--harness", "hellaswag", "--store", tmp_path / "r.sqlite"
    )
    assert_clear_error(code, err, "needs lm-eval, which is not installed", "pip install '.[eval]'")


def test_offline_a_task_whose_data_is_not_cached_is_a_one_line_error(tiny_llama_dir, tmp_path):
    """lm-eval's own arc_easy, with HF_HUB_OFFLINE set and an empty cache: no request, one line naming the hub."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install '.[eval]'")
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "LOWRANK_CACHE": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "lowrank", "evaluate", "--model", str(tiny_llama_dir), "--threads", "1"]
    done = subprocess.run(
        [*command, "--harness", "arc_easy", "--store", str(tmp_path / "r.sqlite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert_clear_error(done.returncode, done.stderr, "arc_easy need the hub", "not in the local datasets cache")
