# `make bench`: set up .venv and run the leaderboard (the device's default matrix) on the embedded dataset.
# `make test`:  set up .venv with the test extras and run the test suite.
# The first Python >= 3.10 on PATH (3.11 first: its torch wheels lie on these machines); PYTHON=... to choose.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3.10 python3 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV   ?= .venv
PY      = $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: bench test setup setup-test lint gpu-check clean

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "error: no Python 3.10 or newer on PATH; install one or run make PYTHON=/path/to/python3"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]' -e examples/uisbench-example-plugin
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

bench: setup
	$(VENV)/bin/platform bench --workdir $(WORKDIR)

test: setup-test
	UISBENCH_STRICT_PLUGINS=1 $(PY) -m pytest -q

lint: setup-test
	$(VENV)/bin/ruff check platform plugins tests benchmarks examples

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache

# `make report-check`: open $(WORKDIR)/report.html in headless Chromium (apt-get install chromium),
# run its self-test (sort, filter, gallery) and save a screenshot next to it.
.PHONY: report-check
report-check: setup
	$(PY) scripts/report_check.py $(WORKDIR)/report.html --screenshot $(WORKDIR)/report-check.png
