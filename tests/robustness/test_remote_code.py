"""A model folder's own code is never run: every transformers load passes ``trust_remote_code=False`` and a folder
that needs its own code is refused in one line before transformers could ask "run the custom code? [y/N]".

Regression: ``load_compressed`` read the config and tokenizer without the flag, so a compressed folder whose config
carried ``auto_map`` and a custom ``model_type`` made transformers prompt, and ``y`` on stdin ran the folder's code.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank.compress import compress, load_compressed, save_compressed
from lowrank.models import ModelLoadError, load_model

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [*sorted((ROOT / "lowrank").rglob("*.py")), *sorted((ROOT / "dashboard").rglob("*.py"))]
SCANNED += [*sorted((ROOT / "pages").rglob("*.py")), ROOT / "app.py"]
LOADERS = ("from_pretrained", "from_config")
EVIL = "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('the folder code ran')\n"


def unguarded_calls(path: Path) -> list[str]:
    """``file:line`` of every ``X.from_pretrained(...)`` / ``X.from_config(...)`` call without ``trust_remote_code=False``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOADERS:
            flag = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
            if not (len(flag) == 1 and isinstance(flag[0], ast.Constant) and flag[0].value is False):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_transformers_load_in_the_package_refuses_remote_code():
    assert len(SCANNED) > 50
    assert [hit for path in SCANNED for hit in unguarded_calls(path)] == []


def with_own_code(folder: Path, file: str = "config.json", **fields) -> Path:
    """``folder`` made to ask for its own code: ``auto_map`` in ``file`` (plus ``fields``) and a module that,
    when run, leaves a file ``RAN`` beside it."""
    path = folder / file
    data = json.loads(path.read_text())
    data["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoTokenizer": ["evil.T", None],
    }
    data.update(fields)
    path.write_text(json.dumps(data))
    (folder / "evil.py").write_text(EVIL)
    return folder


def run_cli(*argv, stdin: str = "y\ny\ny\n") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lowrank", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_refused(proc: subprocess.CompletedProcess, folder: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "own code" in lines[0], proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not (folder / "RAN").exists()


def test_a_compressed_folder_asking_for_its_own_code_is_refused_without_a_prompt(tmp_path, tiny_bert, sentiment_csv):
    folder = with_own_code(save_compressed(compress(tiny_bert, 0.5), tmp_path / "small"), model_type="evil-bert")
    assert_refused(run_cli("evaluate", "--model", folder, "--task", sentiment_csv, "--limit", "1"), folder)


def test_a_compressed_folder_whose_tokenizer_asks_for_its_own_code_is_refused(tmp_path, tiny_bert, monkeypatch):
    folder = save_compressed(compress(tiny_bert, 0.5), tmp_path / "small")
    with_own_code(folder, "tokenizer_config.json", tokenizer_class="EvilTokenizer")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on stdin"))
    with pytest.raises(ModelLoadError, match="own code"):
        load_compressed(folder)
    assert not (folder / "RAN").exists()


@pytest.mark.parametrize(
    "file,fields", [("config.json", {"model_type": "evil-bert"}), ("config.json", {"model_type": None})]
)
def test_a_model_folder_asking_for_its_own_code_is_refused(tmp_path, tiny_bert_dir, sentiment_csv, file, fields):
    folder = with_own_code(shutil.copytree(tiny_bert_dir, tmp_path / "model"), file, **fields)
    assert_refused(run_cli("evaluate", "--model", folder, "--task", sentiment_csv, "--limit", "1"), folder)


def test_auto_map_beside_a_built_in_architecture_loads_the_built_in_class(tmp_path, tiny_bert_dir, monkeypatch):
    folder = with_own_code(shutil.copytree(tiny_bert_dir, tmp_path / "model"))  # model_type stays "bert"
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on stdin"))
    loaded = load_model(str(folder))
    assert type(loaded.model).__name__ == "BertForSequenceClassification" and not (folder / "RAN").exists()
