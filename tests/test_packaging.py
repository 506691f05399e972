"""The package's declared dependencies: the library alone, extras for the dashboard and the tests, one set of pins."""

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_the_library_needs_no_ui_or_test_package():
    names = {spec.split("==")[0].lower() for spec in _project()["dependencies"]}
    assert not names & {"streamlit", "pytest", "playwright", "hypothesis", "ruff"}
    assert any(spec.startswith("streamlit==") for spec in _project()["optional-dependencies"]["dashboard"])


def test_requirements_pin_what_pyproject_declares():
    project = _project()
    declared = set(project["dependencies"]) | {s for extra in project["optional-dependencies"].values() for s in extra}
    assert declared <= _requirements(), sorted(declared - _requirements())


def test_lm_eval_is_an_optional_extra_the_library_imports_without():
    project = _project()
    assert "lm_eval==0.4.13" in project["optional-dependencies"]["eval"]
    assert not any(spec.lower().startswith("lm_eval") for spec in project["dependencies"])
    code = (
        "import importlib, pkgutil, sys, lowrank\n"
        "for m in pkgutil.walk_packages(lowrank.__path__, 'lowrank.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "assert 'lm_eval' not in sys.modules, 'a lowrank module imports lm_eval at import time'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
