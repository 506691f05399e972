"""The redesign's contracts: a method is one file; one resolver computes statistics; every layer gets its own."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowrank
from lowrank.methods import get_method
from lowrank.needs import needs_for
from lowrank.statistics import DEFAULT, StatisticsSettings, is_cached, statistics_for

PACKAGE = Path(lowrank.__file__).parent

NEW_METHOD = '''
"""A probe method: plain SVD of 2W, halved (tests only)."""
from lowrank.methods.registry import Factorization, Option, register_method
from lowrank.methods.svd import truncated_svd


@register_method("probe", "test probe", options={"scale": Option(2.0)})
def probe(W, rank, stats, scale=2.0):
    U, V = truncated_svd(scale * W, rank)
    return Factorization(U / scale, V)
'''


def test_a_method_is_one_new_file(tmp_path):
    copy = tmp_path / "lowrank"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "probe.py").write_text(NEW_METHOD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code = "import lowrank; print(lowrank.__file__); print(lowrank.available_methods())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert str(copy) in out.stdout and "'probe'" in out.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "lowrank", "methods", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(cli.stdout)}
    assert rows["probe"]["options"] == "scale=2.0" and rows["probe"]["needs"] == "-"


def _calls(name: str) -> list[str]:
    """Modules of the package (outside lowrank/statistics) that call ``name``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "statistics" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                found.append(str(path.relative_to(PACKAGE)))
    return found


def test_only_the_resolver_estimates_fisher():
    assert _calls("estimate_fisher") == []
    assert len(_calls("statistics_for")) >= 4  # CLI, sweeps, LPAF... all go through the resolver


def test_no_function_local_imports_of_the_package():
    local = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (
                        inner.level or (inner.module or "").startswith("lowrank")
                    ):
                        local.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}")
    assert local == []


def test_needs_are_declared_once():
    assert get_method("svd").needs == () and get_method("tfwsvd").needs == ("fisher",)
    assert get_method("sparsity_aware").needs == ("mask",)
    assert needs_for(["svd", "fwsvd", "tfwsvd"]) == ("fisher",)
    assert needs_for(["svd"], "uniform") == () and needs_for(["svd"], "fisher_greedy") == ("fisher",)
    assert needs_for(["svd"], predict=True) == ("fisher",)


def test_resolver_gives_every_layer_its_own_statistics(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    settings = StatisticsSettings(num_batches=1, batch_size=4)
    assert not is_cached(tiny_bert, sentiment_csv, ("fisher",), settings)
    stats = statistics_for(tiny_bert, sentiment_csv, ("fisher", "mask"), settings)
    layers = lowrank.compressible_linears(tiny_bert.model)
    assert set(stats) == set(layers)
    for name, module in layers.items():
        assert stats[name]["fisher"].shape == module.weight.shape and stats[name]["mask"].all()
    assert is_cached(tiny_bert, sentiment_csv, ("fisher",), settings)
    assert statistics_for(tiny_bert, None, ()) == {}
    with pytest.raises(ValueError, match="unknown statistic kind"):
        statistics_for(tiny_bert, sentiment_csv, ("telepathy",))


def test_compress_hands_each_layer_its_own_stats(tiny_bert):
    layers = lowrank.compressible_linears(tiny_bert.model)
    stats = {n: {"fisher": torch.rand_like(m.weight)} for n, m in layers.items()}
    via_stats = lowrank.compress(tiny_bert, 0.5, "fwsvd", stats=stats)
    via_importance = lowrank.compress(tiny_bert, 0.5, "fwsvd", importance={n: s["fisher"] for n, s in stats.items()})
    for name in layers:
        a, b = via_stats.model.get_submodule(name), via_importance.model.get_submodule(name)
        assert torch.equal(a.U, b.U) and torch.equal(a.V, b.V)
    missing = dict(stats)
    missing.pop(next(iter(missing)))
    with pytest.raises(ValueError, match="needs fisher statistics for layer"):
        lowrank.compress(tiny_bert, 0.5, "fwsvd", stats=missing)


def test_options_are_checked_before_any_work(tiny_bert):
    with pytest.raises(ValueError, match="unknown option"):
        lowrank.compress(tiny_bert, 0.5, "fwsvd", axes="in")
    with pytest.raises(ValueError, match="choose one of"):
        lowrank.compress(tiny_bert, 0.5, "tfwsvd", solver="newton")


def test_settings_are_validated():
    assert DEFAULT.num_batches == 32 and DEFAULT.batch_size == 16
    with pytest.raises(ValueError, match="labels"):
        StatisticsSettings(labels="guess")
    with pytest.raises(ValueError, match="positive"):
        StatisticsSettings(batch_size=0)
