# The whole set-up on a fresh machine is two commands:
#   make run   - installs into .venv (created if missing), runs the pipeline on the
#                default config (offline, CPU) and prints where the report is
#   make test  - same install plus the peer packages, then the test suite
# While developing (CONTRIBUTING.md): `make check` (lint, types, the tests not marked slow) and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc 2>/dev/null || echo 2)
# nothing is fetched at run time: the default config uses generated and shipped data
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# more arguments for snakemake in `make run`, e.g. SNAKEMAKE_ARGS="--configfile my.yaml" (the tests: a tiny config)
SNAKEMAKE_ARGS ?=
# The long commands (the pipeline, the tests, the GPU check) run under this: the recipe's shell is replaced by
# (exec) a runner that starts the command in a process group of its own, so that a SIGTERM to make, or Ctrl-C,
# stops the command and everything it started; snakemake is sent what Ctrl-C sends (SIGINT), on which it
# cancels its jobs, and what is left 10 s later is killed (attnbench.harness.core.signals)
IN_GROUP = exec $(BIN)/python -m attnbench.harness.core.signals
# pyproject.toml admits a range of torch releases; `make install` takes this one, the CPU build CI tests
# (`make install TORCH_SPEC=` keeps a torch the venv has, or lets pip choose within the range)
TORCH_SPEC ?= torch==2.13.0
# GPU nodes without network (docs/gpu.md): `make wheelhouse` (with network) downloads the other dependencies
# for the node's Python into WHEELHOUSE, leaving out what the node has (NODE_HAS); there, `make gpu-check` (or
# `make install-offline`) builds the venv over the Python that has the node's torch (TORCH_PYTHON), from it alone
WHEELHOUSE ?= wheelhouse
WHEEL_PYTHON ?= 3.12
NODE_HAS ?= scripts/gpu_node_packages.txt
TORCH_PYTHON ?= python3
HAVE_WHEELHOUSE := $(wildcard $(WHEELHOUSE)/wheelhouse.json)

.PHONY: install run test check lint gpu-check wheelhouse install-offline clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,typecheck]' $(if $(TORCH_SPEC),'$(TORCH_SPEC)')
	$(BIN)/python scripts/link_packages.py
	touch $@

# the public implementations `attnbench compare` measures against (pyproject's `peers` extra), so that the tests
# comparing our variants with them run (make test, make check); `make run` does not need them
$(VENV)/.installed-peers: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,typecheck,peers]' $(if $(TORCH_SPEC),'$(TORCH_SPEC)')
	touch $@

run: install
	$(OFFLINE) $(IN_GROUP) $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	@echo "Report: $(CURDIR)/reports/index.html (Markdown: reports/summary.md)"

test: install $(VENV)/.installed-peers
	$(OFFLINE) $(IN_GROUP) $(BIN)/pytest

# the fast loop while developing: lint and types, then the tests not marked slow
check: lint $(VENV)/.installed-peers
	$(OFFLINE) $(IN_GROUP) $(BIN)/pytest -q -m "not slow"

# ruff (pyproject.toml [tool.ruff]), the import layers (pyproject.toml [tool.importlinter]), the types (mypy,
# pyproject.toml [tool.mypy]; it reads .typing/, which `make install` writes) and the workflow; the test suite
# runs the first three as well (tests/project/test_layers.py)
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/snakemake --lint

# On a machine with a CUDA GPU, under 8 minutes from a wheelhouse (docs/gpu.md): the install, then
# scripts/gpu_check.py: the CUDA tests, ListOps with every variant in bf16, the sweep at 16K tokens, and one table
# (results/gpu_check/summary.md).
# The install: with a wheelhouse (WHEELHOUSE/wheelhouse.json), offline over TORCH_PYTHON's torch (no gpu extra:
# xformers' cases are then unavailable); without one, from the package index with the gpu extra (torch 2.10.0 and
# xformers 0.0.35, CUDA 12.8). Either prints how long it took. ARGS go to the script: `make gpu-check ARGS=--dry-run`
# prints the plan and its time budget and checks its config, on any machine (without the gpu extra).
gpu-check: $(if $(HAVE_WHEELHOUSE),install-offline,$(if $(filter --dry-run,$(ARGS)),install,$(VENV)/.installed-gpu))
	$(OFFLINE) $(IN_GROUP) $(BIN)/python scripts/gpu_check.py $(ARGS)

$(VENV)/.installed-gpu: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); \
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,gpu]' && \
	echo "install: $$(( $$(date +%s) - start )) s (the gpu extra, from the package index)"
	touch $@

# with network: the wheelhouse for a GPU node (under 64 MiB; WHEEL_PYTHON: the node's Python)
wheelhouse:
	$(PYTHON) scripts/wheelhouse.py build --out $(WHEELHOUSE) --python-version $(WHEEL_PYTHON) --have $(NODE_HAS)

# without network: the venv over TORCH_PYTHON's torch, from the wheelhouse alone
install-offline: $(VENV)/.installed-offline

$(VENV)/.installed-offline: pyproject.toml $(HAVE_WHEELHOUSE)
	$(TORCH_PYTHON) scripts/wheelhouse.py install --wheelhouse $(WHEELHOUSE) --venv $(VENV) --base-python $(TORCH_PYTHON)
	touch $@

clean:
	rm -rf results reports logs data .snakemake
