# Two entry points for a fresh machine with Python >= 3.10 and pip: `make demo` and `make test`.
# Each creates the project virtualenv if absent and installs what it needs.
#
# torch is installed first, pinned, so that no dependency's looser `torch>=...` pulls a
# multi-GB CUDA build. On a GPU machine set TORCH_SPEC to your CUDA build (or pre-install torch in
# the venv: an importable torch is kept) and add the fla kernels with `make setup EXTRAS=dev,gpu`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.metastate-installed

.PHONY: setup demo test bench lint

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	@# lm_eval --model metastate: register the adapter with the stock lm-eval command (no-op without it)
	@if $(BIN)/python -c "import lm_eval" 2>/dev/null; then $(BIN)/python -m evals.lm_eval_hook; fi
	@touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/metastate train demo train.out_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/ops_bench.py

lint: setup
	$(BIN)/ruff check .
