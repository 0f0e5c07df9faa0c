# `make test` and `make demo` each create .venv and install what they need on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Pinned so pip takes the CPU wheel on this disk instead of resolving a multi-GB CUDA build of torch.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= .demo

.PHONY: test lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	# The torch present is named again, or pip 26.3 replaces torch 2.13.0+cpu with 2.14.1 and its CUDA wheels
	# (4 GB) though both satisfy the project's range.
	$(BIN)/python -m pip install --quiet -e ".[dev,demo,onnx]" "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__)')"
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(BIN)/gradwatch demo --workdir $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
