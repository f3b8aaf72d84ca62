# orpo-pipeline: every target is wiring; the logic lives in the CLI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
export ORPO_PIPELINE_CACHE ?= $(CURDIR)/.cache/orpo-pipeline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# pip byte-compiles what it installs (~55 s). Keep it: where PYTHONDONTWRITEBYTECODE is set (as on
# CI) nothing else writes .pyc files, and every process the tests start would compile torch and
# transformers again (the suite took 665 s on a fresh clone instead of ~505 s).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

.PHONY: setup
setup: $(STAMP) ## Create .venv from the pinned requirements.lock (idempotent)

.PHONY: model
model: setup ## Provision the embedded default model (SmolLM2-135M-Instruct) into the cache
	$(BIN)/orpo-pipeline model default

.PHONY: data
data: setup ## Run the default data recipe (pipelines/default.yaml) -> runs/data/default
	$(BIN)/orpo-pipeline data pipelines/default.yaml

.PHONY: train
train: setup model ## Train the default model with ORPO (pipelines/train/default.yaml) -> runs/train
	$(BIN)/orpo-pipeline train pipelines/train/default.yaml

.PHONY: compare
compare: setup model data ## Compare ORPO, SFT->DPO, SFT and SimPO at matched compute (< 30 min) -> runs/compare
	$(BIN)/orpo-pipeline compare pipelines/compare/default.yaml

.PHONY: test
test: setup model ## Run the test suite
	$(BIN)/pytest -q

MIN_VENV := .venv-minimums

.PHONY: test-minimums
test-minimums: setup model ## Run the suite with every runtime dependency at its pyproject.toml minimum
	rm -rf $(MIN_VENV)
	$(BIN)/uv venv --quiet --python $(BIN)/python $(MIN_VENV)
	$(BIN)/python tests/dev_pins.py > $(MIN_VENV)/dev-pins.txt
	VIRTUAL_ENV=$(MIN_VENV) $(BIN)/uv pip install --quiet --resolution lowest-direct \
		-e . -r $(MIN_VENV)/dev-pins.txt
	VIRTUAL_ENV=$(MIN_VENV) $(BIN)/uv pip tree --depth 1 --package orpo-pipeline
	$(MIN_VENV)/bin/pytest -q

.PHONY: lint
lint: setup ## Lint with ruff and check that schemas/ matches the models
	$(BIN)/ruff check orpo_pipeline tests benchmarks
	$(BIN)/orpo-pipeline schema export --check

.PHONY: schemas
schemas: setup ## Regenerate schemas/*.schema.json from the pydantic models
	$(BIN)/orpo-pipeline schema export

.PHONY: bench
bench: setup model ## Run the benchmarks (slow; results in runs/bench)
	$(BIN)/python -m benchmarks

.PHONY: bench-train
bench-train: setup model ## Benchmark our trainer against TRL's ORPOTrainer only (slow; DEVICE=cuda on a GPU)
	$(BIN)/python -m benchmarks.bench_train --device $(or $(DEVICE),cpu)

.PHONY: bench-scale
bench-scale: setup ## 10 M pairs through every curation stage, local and on Ray (slow; PAIRS=50000 for fewer)
	$(BIN)/python -m benchmarks.bench_scale --pairs $(or $(PAIRS),10000000)

.PHONY: clean
clean: ## Remove the venv, caches and runs
	rm -rf $(VENV) $(MIN_VENV) .cache runs .pytest_cache .ruff_cache .hypothesis
