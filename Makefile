# Two commands set up a fresh machine and run things:
#   make demo   -> virtual environment + the quickstart fit (MNIST-1D MLP, about 10 s on 2 CPU cores)
#   make test   -> virtual environment + the test suite (slow scientific checks excluded)
#
# Torch is pinned here, not in pyproject.toml (which takes any torch >= 2.3): 2.14.1 with
# torchvision 0.29.1 is a pair that imports together and installs from this project's CPU
# machines' local package cache; on a GPU machine pip resolves the same pins to CUDA wheels.
# Override with `make TORCH_PINS="torch==X torchvision==Y" test`.

PYTHON ?= python3
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[vision,dev]"
	touch $(STAMP)

demo: $(STAMP)
	WANDB_SILENT=true $(BIN)/overparam-lit fit -c configs/quickstart.yaml --trainer.default_root_dir runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# The second pass reruns the tests that compare computations equal up to rounding (marker
# `numeric`) with 2 threads and AVX2 kernels in ATen, MKL and oneDNN (MKL's code path on AMD CPUs):
# another summation order, so a tolerance fitted to one CPU fails here rather than on another machine.
NUMERIC_ENV ?= OVERPARAM_TEST_THREADS=2 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 \
	MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(BIN)/python -m pytest -q
	$(NUMERIC_ENV) WANDB_MODE=offline $(BIN)/python -m pytest -q -m "numeric and not slow"

test-slow: $(STAMP)
	OMP_NUM_THREADS=2 WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
