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
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# On every core (at most 4): the Flower end-to-end tests spend much of their time waiting on
# processes they started, so the unit tests fill the gaps (2 cores: 6-11 minutes instead of 14).
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --maxprocesses 4

# A simulated federation of four institutions (four species, all four tasks, DP) on this machine.
# --fresh: the simulated institutions' ledgers start from zero each time (real ones never do).
demo: $(STAMP)
	$(BIN)/helixfed simulate --config configs/demo.yaml --fresh

# The CPU benchmark suite (not part of `make test`): bench/results/*.md, then bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py
	$(BIN)/python bench/make_results.py

lint: $(STAMP)
	$(BIN)/ruff check common client server tests bench

# Regenerate the gRPC service stubs (committed) from server/service/helixfed.proto.
protos: $(STAMP)
	PYTHON=$(BIN)/python server/service/generate_stubs.sh

clean:
	rm -rf $(VENV) .pytest_cache runs
