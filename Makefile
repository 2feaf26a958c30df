# Two commands do all the set-up: `make demo` and `make test` (each creates .venv on first use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_EXTRAS ?= bench,io
TEST_EXTRAS ?= test,train,bench,io

.PHONY: demo test test-all bench bench-throughput setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(DEMO_EXTRAS)]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(TEST_EXTRAS)]"
	touch $@

setup: $(VENV)/.test-installed

demo: $(VENV)/.demo-installed
	$(BIN)/tec demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

test-all: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m ""

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/rd.py

bench-throughput: $(VENV)/.test-installed
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) build *.egg-info
