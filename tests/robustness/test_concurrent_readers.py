"""Readers during a replacement: a process loading a folder while another replaces it gets the old version or the
new one, whole, or a one-line "being replaced, retry"; never a mix of the two (a misleading size mismatch)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lowrank.compress import compress, load_any, load_compressed, low_rank_layers, save_compressed
from lowrank.files.readers import FolderReplaced
from lowrank.models import load_model

ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
from lowrank.compress import load_compressed, save_compressed
versions = [load_compressed(p) for p in sys.argv[2:4]]
target, end, i = sys.argv[1], time.time() + float(sys.argv[4]), 0
print("ready", flush=True)
while time.time() < end:
    save_compressed(versions[i % 2], target)
    i += 1
    time.sleep(0.1 * (i % 3))  # back-to-back replacements and short gaps: a slow reader still finds a quiet moment
print(i)
"""


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, tiny_bert_dir) -> tuple[Path, Path, dict, dict]:
    """Two compressed versions of one model with different ranks (mixing them cannot load cleanly)."""
    root = tmp_path_factory.mktemp("versions")
    loaded = load_model(str(tiny_bert_dir))
    a = save_compressed(compress(loaded, 0.3), root / "a")
    b = save_compressed(compress(loaded, 0.7), root / "b")
    return a, b, load_compressed(a).model.lowrank_info.ranks, load_compressed(b).model.lowrank_info.ranks


def start_writer(target: Path, a: Path, b: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = textwrap.dedent(WRITER)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(target), str(a), str(b), str(seconds)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_while_replaced(target: Path, a: Path, b: Path, load, seconds: float = 4.0) -> tuple[int, int, list]:
    """Loads of ``target`` while a writer process replaces it for ``seconds``: (whole loads, 'being replaced'
    errors, other outcomes)."""
    save_compressed(load_compressed(a), target)
    writer = start_writer(target, a, b, seconds)
    whole, replaced, other = 0, 0, []
    try:
        assert writer.stdout.readline().strip() == "ready"  # its imports and loads done: replacing from now on
        end = time.time() + seconds
        while time.time() < end and writer.poll() is None:
            try:
                loaded = load(target)
            except FolderReplaced as err:
                assert "being replaced" in str(err) and "\n" not in str(err)
                replaced += 1
                continue
            except Exception as err:  # every other outcome is the defect
                other.append(f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
                continue
            whole += 1
            other.extend(check_whole(loaded))
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    return whole, replaced, other


def check_whole(loaded) -> list:
    """Problems of a loaded model: its recorded ranks must be the ranks of its layers."""
    actual = {n: m.rank for n, m in low_rank_layers(loaded.model).items()}
    return [] if actual == loaded.model.lowrank_info.ranks else [f"ranks {actual} vs recorded"]


@pytest.mark.parametrize("load", [load_compressed, load_any], ids=["load_compressed", "load_any"])
def test_a_reader_gets_one_version_while_another_process_replaces_the_folder(tmp_path, two_versions, load):
    a, b, ranks_a, ranks_b = two_versions
    whole, replaced, other = read_while_replaced(tmp_path / "model", a, b, load)
    assert not other, f"{len(other)} mixed or broken loads, e.g. {other[:3]}"
    assert whole > 0, f"no whole load in {replaced} attempts"
