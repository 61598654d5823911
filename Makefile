# voxd: set-up, tests, demo and benchmark. `make demo` and `make test` do all set-up on a fresh
# Debian 12 machine: missing Debian packages (apt-get, as root), then .venv with the package and its
# test extras. Variables can be overridden on the command line, e.g. `make demo ENDPOINT=ipc:///tmp/voxd`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# Debian packages the project needs (installed only when missing; one list for every target).
DEB_PACKAGES ?= libsndfile1 pulseaudio libasound2-plugins portaudio19-dev gcc python3-dev
PIP_EXTRAS ?= test,metrics

ENDPOINT ?= tcp://127.0.0.1:7700
DEMO_CONFIG ?= config/demo.yaml
DEMO_OUT ?= demo-out.wav
DEMO_TIMEOUT ?= 120
BENCH_CONFIG ?= config/default.yaml
PYTEST_ARGS ?=

# Rebuilt (pip install -e) only when pyproject.toml is newer than it.
STAMP := $(VENV)/.voxd-installed

.PHONY: help venv debs test lint demo bench clean

help:
	@echo "make demo    set up, then run the daemon on demo/ with a subscriber writing $(DEMO_OUT)"
	@echo "make test    set up, then ruff and pytest"
	@echo "make venv    install missing Debian packages ($(DEB_PACKAGES)) and $(VENV)"
	@echo "make lint    ruff check ."
	@echo "make bench   chain cost: bench/chain_bench.py --config $(BENCH_CONFIG)"
	@echo "make clean   remove $(VENV), $(DEMO_OUT) and caches"

venv: $(STAMP)

# Always checked (cheap: dpkg-query); order-only, so it never forces a pip re-install by itself.
debs:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" tools/setup_debs.sh $(DEB_PACKAGES)

$(STAMP): pyproject.toml | debs
	@if ! $(VENV)/bin/python -c '' 2>/dev/null; then \
		echo "creating $(VENV)"; rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[$(PIP_EXTRAS)]'
	@touch $@

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	@VENV="$(VENV)" DEMO_CONFIG="$(DEMO_CONFIG)" DEMO_OUT="$(DEMO_OUT)" ENDPOINT="$(ENDPOINT)" \
		DEMO_TIMEOUT="$(DEMO_TIMEOUT)" tools/run_demo.sh

bench: venv
	$(VENV)/bin/python bench/chain_bench.py --config $(BENCH_CONFIG) --input demo/respeaker4-kitchen.flac
	$(VENV)/bin/python bench/capture_latency.py --seconds 20

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist .pytest_cache .ruff_cache .hypothesis
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
