# `make bench`: set up .venv and run the leaderboard on the embedded dataset.
# `make test`:  set up .venv with the test extras and run the test suite.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: bench test setup setup-test lint gpu-check clean

$(VENV)/bin/python:
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
	$(VENV)/bin/platform bench --all --workdir $(WORKDIR)

test: setup-test
	UISBENCH_STRICT_PLUGINS=1 $(PY) -m pytest -q

lint: setup-test
	$(VENV)/bin/ruff check platform plugins tests benchmarks examples

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
