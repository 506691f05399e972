"""``lowrank heal``: a healed folder from a compressed one, and one-line errors on bad input."""

from __future__ import annotations

import json

import pytest

from lowrank import compress, load_compressed, save_compressed
from lowrank.info import load_info
from tests.conftest import NEGATIVE, POSITIVE
from tests.robustness.cli_errors import assert_clear_error, run

FAST = ["--batch-size", "2", "--max-length", "16", "--heldout-batches", "2", "--threads", "1"]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join([" ".join(POSITIVE[i:] + NEGATIVE[:i]) for i in range(10)] * 10))
    return path


@pytest.fixture()
def compressed_folder(tiny_llama, tmp_path):
    return save_compressed(compress(tiny_llama, 0.3, "svd"), tmp_path / "small")


@pytest.mark.parametrize("sequential", [False, True])
def test_heal_writes_a_healed_folder_and_leaves_the_input_alone(
    capsys, compressed_folder, corpus, tmp_path, sequential
):
    before = {p.name: p.read_bytes() for p in compressed_folder.iterdir()}
    level = ["--level", "block", "--block-steps", "3"] + (["--sequential"] if sequential else [])
    code, out, err = run(
        capsys, "heal", "--model", compressed_folder, "--task", corpus, "--out", tmp_path / "healed", *FAST, *level,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    row = json.loads(out)
    assert row["heldout_kl_after"] <= row["heldout_kl_before"] and row["level"] == "block"
    healing = load_compressed(tmp_path / "healed").model.lowrank_info.healing
    assert healing["config"]["block_steps"] == 3 and healing.get("sequential", False) == sequential
    assert {p.name: p.read_bytes() for p in compressed_folder.iterdir()} == before


def test_heal_end_to_end_and_evaluate(capsys, compressed_folder, corpus, tmp_path):
    code, out, err = run(
        capsys, "heal", "--model", compressed_folder, "--task", corpus, "--out", tmp_path / "healed", *FAST,
        "--steps", "2", "--eval-every", "1", "--backoff", "0.5", "--precision", "bfloat16", "--evaluate", "--json",
    )  # fmt: skip
    assert code == 0, err
    row = json.loads(out)
    config = load_info(tmp_path / "healed").healing["config"]
    assert config["backoff"] == 0.5 and config["precision"] == "bfloat16"
    assert row["steps"] == 2 and row["metric"] == "perplexity" and row["value"] > 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--steps", "0"], "--steps must be a whole number"),
        (["--backoff", "1.5"], "--backoff must be a finite number in (0, 1]"),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
        (["--level", "layer"], "invalid choice: 'layer'"),
        (["--precision", "float16"], "invalid choice: 'float16'"),
        (["--sequential"], "block level only"),
        (["--heldout-batches", "500"], "holds 500 out"),
        (["--dense", "/no/such/model"], "/no/such/model"),
    ],
)
def test_heal_refuses_bad_input_in_one_line(capsys, compressed_folder, corpus, tmp_path, extra, needle):
    code, _, err = run(capsys, "heal", "--model", compressed_folder, "--task", corpus, "--out", tmp_path / "o", *extra)
    assert_clear_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_heal_refuses_a_dense_folder_and_a_missing_out(capsys, tiny_llama_dir, compressed_folder, corpus, tmp_path):
    code, _, err = run(capsys, "heal", "--model", tiny_llama_dir, "--task", corpus, "--out", tmp_path / "o")
    assert_clear_error(code, err, "not a compressed model folder")
    code, _, err = run(capsys, "heal", "--model", compressed_folder, "--task", corpus)
    assert_clear_error(code, err, "pass --out")
    before = {p.name: p.read_bytes() for p in compressed_folder.iterdir()}
    code, _, err = run(capsys, "heal", "--model", compressed_folder, "--task", corpus, "--out", compressed_folder)
    assert_clear_error(code, err, "is the model being healed")  # a lowrank output, but the one being read
    assert {p.name: p.read_bytes() for p in compressed_folder.iterdir()} == before
