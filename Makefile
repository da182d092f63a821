# Two commands set up a fresh machine and run things:
#   make demo   -> virtual environment + the quickstart fit (MNIST-1D MLP, about a minute on a laptop CPU)
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

test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=2 WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
