# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Both create .venv on first use (pip, not uv/poetry: pip takes the torch wheels
# that lie on this machine's disk instead of downloading several GB).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARCH   := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PKGS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
endif
EXTRAS ?= dev,ray
STAMP  := $(VENV)/.installed-$(EXTRAS)
OUT    ?= runs/demo

.PHONY: help venv demo test test-slow lint bench clean

help:
	@echo "make demo       set up .venv, run the quick reproduction, write the report"
	@echo "make test       set up .venv, ruff + the test suite (slow checks excluded)"
	@echo "make test-slow  the tests marked slow"
	@echo "make bench      the benchmarks in bench/ (ratios measured side by side)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PKGS)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/rankbias reproduce --preset quick --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
