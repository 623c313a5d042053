# The two entry points of the README. Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration bench clean

# Set up and run the main command on the embedded default: the whole closed loop on simulated days (CPU).
demo: $(STAMP)
	$(BIN)/tlp run

# Set up and run everything CI runs: lint, type check, and the whole test suite (integration included).
test: $(STAMP) lint
	$(BIN)/pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -ra -m "not integration"

integration: $(STAMP)
	$(BIN)/pytest -ra -m integration

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .tlp .pytest_cache .mypy_cache .ruff_cache
