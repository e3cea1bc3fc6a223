# PIXL — the targets other tooling relies on: setup, demo, down, test (see README.md).
SHELL := /bin/bash
# Python 3.11 (Debian 12's python3.11; installed by stack/install-system-deps.sh if missing).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo down test test-unit lint check-allowlists bench bench-destinations clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
		|| bash stack/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,stack]'
	touch $@

system-deps:
	@bash stack/install-system-deps.sh

demo: system-deps setup
	$(BIN)/python -m stack.demo

down: setup
	$(BIN)/python -m stack.demo --down

# The fault drills and the system tests each run on a stack of their own, side by side
# (tests/conftest.py groups them); the rest is spread over the same workers.
test: system-deps setup lint check-allowlists
	$(BIN)/pytest -q -n 3 --dist loadgroup

test-unit: setup
	$(BIN)/pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Audits every project's allow-list against DICOM PS3.15 (runs in CI through `make test`).
check-allowlists: setup
	$(BIN)/pixl allowlist check --all

bench: system-deps setup
	$(BIN)/python -m benchmarks

# Export throughput to DICOMweb vs FTPS and against a bare STOW-RS (also part of `make bench`).
bench-destinations: system-deps setup
	$(BIN)/python -m benchmarks --only destination

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
