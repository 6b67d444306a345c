# The quickstart: `make demo` and `make test` set everything up in .venv and run.
PYTHON ?= python3
VENV ?= .venv
EVENTS ?= 20000
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "modelmon needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,demo,test]"
	@touch $@

demo: $(BIN)/.installed
	$(BIN)/modelmon demo --events $(EVENTS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check schemas producers pipeline tests

clean:
	rm -rf $(VENV) modelmon-data .pytest_cache
