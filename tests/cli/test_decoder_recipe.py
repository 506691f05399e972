"""The README's decoder recipe on the tiny Llama: kfac_greedy ranks from ``lowrank allocate``, then ``lowrank
compress --plan`` with kfac_svd, which runs its error-compensated form on a causal LM and keeps the plan's ranks."""

from __future__ import annotations

import json

from lowrank.info import load_info
from tests.conftest import NEGATIVE, POSITIVE
from tests.robustness.cli_errors import run


def test_the_readme_decoder_recipe_runs_allocate_then_compress_with_the_plan(capsys, tiny_llama_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(POSITIVE[i:] + NEGATIVE[:i]) for i in range(20)), encoding="utf-8")
    plan = tmp_path / "plan.json"
    code, _, err = run(
        capsys, "allocate", "--model", tiny_llama_dir, "--task", corpus, "--budget", "0.8",
        "--strategy", "kfac_greedy", "--out", plan,
    )  # fmt: skip
    assert code == 0, err
    ranks = json.loads(plan.read_text())["ranks"]
    assert len(set(ranks.values())) > 1  # not uniform
    out = tmp_path / "s80"
    code, _, err = run(
        capsys, "compress", "--model", tiny_llama_dir, "--task", corpus, "--plan", plan, "--method", "kfac_svd",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    info = load_info(out)
    assert info.method == "kfac_svd_compensated"
    assert info.ranks == {layer: rank for layer, rank in ranks.items() if layer in info.ranks}
