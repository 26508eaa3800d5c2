# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
BENCH ?=
# `make gpu-check` runs with the machine's own Python (no install): .venv's when there, else python3
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= gpu_check.json
GPU_CHECK_ARGS ?=

.PHONY: install test demo bench gpu-check clean

install: $(STAMP)

# Re-install only when the project's requirements change (a no-op when .venv is current).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,tensorboard]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/python -m losh.cli.demo --out $(DEMO)

bench: install
	$(BIN)/python -m bench.run $(BENCH)

# One CUDA GPU, five minutes, one JSON file (a dry run on tiny sizes where CUDA is absent).
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m bench.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache
