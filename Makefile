# Two entry points on a fresh machine: `make run` (dashboard) and `make test` (test suite).
# Both create/refresh .venv from requirements.txt; a second call skips what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-stamp
PORT ?= 8501
# The dashboard has no authentication: it listens on this machine only unless ADDRESS says otherwise (0.0.0.0).
ADDRESS ?= 127.0.0.1

.PHONY: run test venv assets benchmarks clean chromium install-check

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

assets: venv
	$(PY) -m lowrank prepare

# The dashboard comes up at once: on a first run it builds the default model (minilm-rt) in the background itself,
# and data sets are fetched when first used.
run: venv
	$(PY) -m dashboard.launch --server.address $(ADDRESS) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: assets
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# `pip install .` into a fresh venv (its dependencies from pip's cache), then the console script and the
# import from another folder: the package is installable on its own, without the dashboard's or the tests'
# packages (nor lm-eval: `lowrank evaluate --harness` imports it only when run); `pip install .[dashboard]` adds streamlit.
CHECK_VENV := /tmp/lowrank-install-check
install-check: venv
	rm -rf $(CHECK_VENV) && $(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q . 2>&1 | grep -v '^WARNING: Location' || true
	cd /tmp && $(CHECK_VENV)/bin/lowrank --help > /dev/null && $(CHECK_VENV)/bin/python -c "import lowrank; print('lowrank', lowrank.__file__)"
	cd /tmp && $(CHECK_VENV)/bin/python -c "import importlib, pkgutil, lowrank; mods = [m.name for m in pkgutil.walk_packages(lowrank.__path__, 'lowrank.') if not m.name.endswith('__main__')]; [importlib.import_module(m) for m in mods]; print(len(mods), 'modules import without streamlit')"
	for p in streamlit pytest playwright lm_eval; do ! $(CHECK_VENV)/bin/python -m pip show -q $$p 2>/dev/null || { echo "error: pip install . pulled in $$p"; exit 1; }; done
	$(CHECK_VENV)/bin/python -m pip install -q '.[dashboard]' 2>&1 | grep -v '^WARNING: Location' || true
	$(CHECK_VENV)/bin/python -m pip show -q streamlit || { echo "error: pip install .[dashboard] did not install streamlit"; exit 1; }
	rm -rf $(CHECK_VENV)

# System Chromium for tests/dashboard/test_browser.py (Playwright drives it; no browser download). Needs root for apt-get.
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

benchmarks: venv
	$(PY) -m lowrank prepare --build all  # every suite task's fine-tuned MiniLM (once)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) tests/artifacts
