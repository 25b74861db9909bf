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

# The wheels a GPU machine without a package registry needs on top of torch + triton (Python 3.12,
# x86-64): `make gpu-kit` here, carry gpu-kit/ there, then `make gpu-check` (docs/gpu.md).
GPU_KIT ?= gpu-kit
GPU_KIT_WHEELS := omegaconf==2.4.0 zstandard==0.25.0 fla-core==0.6.0 packaging==26.4 tqdm==4.70.1
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

.PHONY: setup demo test bench lint gpu-kit gpu-check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	@# lm_eval --model metastate: register the adapter with the stock lm-eval command (no-op without it)
	@if $(BIN)/python -c "import lm_eval" 2>/dev/null; then $(BIN)/python -m evals.lm_eval_hook; fi
	@touch $@

setup: $(STAMP)

# Each demo run gets its own runs/demo-<time>; runs/demo then links to the newest, so the README's
# examples (metastate eval runs/demo, ...) work right after. DEMO_ARGS adds overrides
# (make demo DEMO_ARGS="train.steps=20"). A real runs/demo directory (from `metastate train demo`)
# is left alone.
DEMO_ARGS ?=
demo: setup
	@run=demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/metastate train demo train.out_dir=runs/$$run $(DEMO_ARGS) || exit $$?; \
	if [ -L runs/demo ] || [ ! -e runs/demo ]; then \
		ln -sfn $$run runs/demo && echo "runs/demo -> runs/$$run (the README's examples use runs/demo)"; \
	else echo "runs/demo is a directory, not a link: left as it is; the new run is runs/$$run"; fi

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/ops_bench.py

lint: setup
	$(BIN)/ruff check .

gpu-kit:
	@mkdir -p $(GPU_KIT)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_KIT) $(GPU_KIT_WHEELS)
	@du -sh $(GPU_KIT) | cut -f1 | xargs echo "gpu-kit: wheels in $(GPU_KIT)/, total"
	@echo "gpu-kit: copy the repository with $(GPU_KIT)/ to the GPU machine and run: make gpu-check"

gpu-check:
	@if ls $(GPU_KIT)/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps $(GPU_KIT)/*.whl; fi
	$(GPU_PYTHON) benchmarks/gpu_check.py --out gpu-check-out
