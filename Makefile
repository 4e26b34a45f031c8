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

.PHONY: help venv demo test test-slow lint browser bench clean

help:
	@echo "make demo       set up .venv, run the quick reproduction, write the report"
	@echo "make test       set up .venv, ruff + the test suite (slow checks excluded);"
	@echo "                installs Chromium (apt-get) for the browser test where it is missing"
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

# The report's browser check (tests/test_report.py) needs a headless Chromium: installed
# from Debian where none is found, so that CI runs the check rather than skipping it (and
# under CI=true that skip fails: tests/conftest.py). Not a step of `make demo`.
BROWSERS := chromium chromium-browser google-chrome
# sudo -n: never a password prompt in the middle of a test run
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the report's browser test (apt-get, about a minute)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0; \
	fi; \
	case "$${CI:-}" in ""|0|false|no) \
	  echo "warning: no Chromium (apt-get install chromium): the browser test will skip" >&2;; \
	*) echo "error: no Chromium, and it could not be installed; CI must run the browser test" >&2; \
	  exit 1;; esac

test: lint browser
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
