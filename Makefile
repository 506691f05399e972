# Two entry points on a fresh machine: `make run` (dashboard) and `make test` (test suite).
# Both create/refresh .venv from requirements.txt; a second call skips what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-stamp
PORT ?= 8501

.PHONY: run test venv assets benchmarks clean chromium

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

assets: venv
	$(PY) -m lowrank prepare

run: venv
	$(PY) -m lowrank prepare --build-minilm-rt
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: assets
	$(PY) -m pytest -q

# System Chromium for tests/test_browser.py (Playwright drives it; no browser download). Needs root for apt-get.
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

benchmarks: venv
	$(PY) -m lowrank prepare --build-minilm-rt
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) tests/artifacts
