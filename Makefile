# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
BENCH ?=

.PHONY: install test demo bench clean

install: $(STAMP)

# Re-install only when the project's requirements change (a no-op when .venv is current).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/python -m cli.demo --out $(DEMO)

bench: install
	$(BIN)/python -m bench.run $(BENCH)

clean:
	rm -rf $(DEMO) .pytest_cache
