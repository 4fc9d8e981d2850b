# helixfed: `make demo` and `make test` each set the project up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup test lint demo bench protos clean

setup: $(STAMP)

# torch first and pinned: it is the local CPU wheel; anything looser can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check common client server tests bench

# Regenerate the gRPC service stubs (committed) from server/service/helixfed.proto.
protos: $(STAMP)
	PYTHON=$(BIN)/python server/service/generate_stubs.sh

clean:
	rm -rf $(VENV) .pytest_cache runs
