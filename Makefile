# The whole set-up on a fresh machine is two commands:
#   make run   - installs into .venv (created if missing), runs the pipeline on the
#                default config (offline, CPU) and prints where the report is
#   make test  - same install, then the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc 2>/dev/null || echo 2)
# nothing is fetched at run time: the default config uses generated and shipped data
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install run test lint gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: install
	$(OFFLINE) $(BIN)/snakemake --cores $(CORES)
	@echo "Report: $(CURDIR)/reports/index.html (Markdown: reports/summary.md)"

test: install
	$(OFFLINE) $(BIN)/pytest

# ruff (pyproject.toml [tool.ruff]), the import layers (pyproject.toml [tool.importlinter]) and the
# workflow; the test suite runs the first two as well (tests/test_layers.py)
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/snakemake --lint

# On a machine with a CUDA GPU, about 10 minutes (README, "On a GPU"): installs the gpu extra (xformers), then
# scripts/gpu_check.py: the CUDA tests, ListOps with every variant in bf16, the sweep to 16K tokens, and one table
# (results/gpu_check/summary.md). ARGS go to the script: `make gpu-check ARGS=--dry-run` prints the plan and its
# time budget and checks its config, on any machine, without the gpu extra.
gpu-check: install
	$(if $(filter --dry-run,$(ARGS)),,$(MAKE) --no-print-directory $(VENV)/.installed-gpu)
	$(OFFLINE) $(BIN)/python scripts/gpu_check.py $(ARGS)

$(VENV)/.installed-gpu: pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,gpu]'
	touch $@

clean:
	rm -rf results reports logs data .snakemake
