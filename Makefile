# voxd: set-up, tests, demo and benchmark. `make demo` and `make test` do all set-up on a fresh
# Debian 12 machine: missing Debian packages (apt-get, as root), then .venv with the package and its
# test extras. Variables can be overridden on the command line, e.g. `make demo ENDPOINT=ipc:///tmp/voxd`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# Debian packages the project needs (installed only when missing; one list for every target).
# systemd: systemd-analyze/systemd-sysusers for the unit tests; procps: /bin/kill, the unit's ExecReload;
# libspeexdsp1: the aec stage's default engine (loaded with ctypes).
DEB_PACKAGES ?= libsndfile1 libspeexdsp1 pulseaudio libasound2-plugins portaudio19-dev gcc python3-dev systemd procps
PIP_EXTRAS ?= test,metrics,plot,asr,dfn3,rnnoise,aec

ENDPOINT ?= tcp://127.0.0.1:7700
DEMO_CONFIG ?= config/demo.yaml
DEMO_OUT ?= demo-out.wav
DEMO_TIMEOUT ?= 120
BENCH_CONFIG ?= config/default.yaml
PYTEST_ARGS ?=

# Rebuilt (pip install -e) only when pyproject.toml is newer than it.
STAMP := $(VENV)/.voxd-installed

# `make install`: the systemd service (systemd/README.md). DESTDIR stages everything under a directory
# (packaging, tests) and then skips the steps that act on the running system (sysusers, daemon-reload).
DESTDIR ?=
VOXD_HOME ?= /opt/voxd
BINDIR ?= /usr/bin
UNITDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
CONFDIR ?= /etc/voxd
DOCDIR ?= /usr/share/doc/voxd
INSTALL_CONFIG ?= config/default.yaml

.PHONY: help venv debs test lint demo bench bench-peers clean install install-venv install-service uninstall

help:
	@echo "make demo    set up, then run the daemon on demo/ with a subscriber writing $(DEMO_OUT)"
	@echo "make test    set up, then ruff, mypy (strict: voxd/ and plugins/) and pytest"
	@echo "make venv    install missing Debian packages ($(DEB_PACKAGES)) and $(VENV)"
	@echo "make lint    ruff check . and mypy"
	@echo "make bench   chain cost: bench/chain_bench.py --config $(BENCH_CONFIG)"
	@echo "make bench-peers  voxd vs RNNoise, DeepFilterNet3, WebRTC NS, SpeexDSP, noisereduce -> bench/RESULTS.md"
	@echo "make clean   remove $(VENV), $(DEMO_OUT) and caches"
	@echo "make install the systemd service (root): venv in $(VOXD_HOME)/venv, $(BINDIR)/voxd, unit, user, config"
	@echo "make uninstall  remove what make install put there (keeps $(CONFDIR) and the voxd user)"

venv: $(STAMP)

# Always checked (cheap: dpkg-query); order-only, so it never forces a pip re-install by itself.
debs:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" tools/setup_debs.sh $(DEB_PACKAGES)

$(STAMP): pyproject.toml | debs
	@if ! $(VENV)/bin/python -c '' 2>/dev/null; then \
		echo "creating $(VENV)"; rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[$(PIP_EXTRAS)]'
	@touch $@

# wyoming-satellite pins wyoming==1.4.1 (voxd uses 1.10): it gets a venv of its own, used only by
# tests/test_wyoming.py, which runs it as Home Assistant satellites run it (issue 19).
SAT_VENV ?= .venv-satellite
SAT_STAMP := $(SAT_VENV)/.installed
$(SAT_STAMP): | debs
	@if ! $(SAT_VENV)/bin/python -c '' 2>/dev/null; then rm -rf $(SAT_VENV) && $(PYTHON) -m venv $(SAT_VENV); fi
	$(SAT_VENV)/bin/python -m pip install --disable-pip-version-check -q 'wyoming-satellite==1.0.0'
	@touch $@

test: venv $(SAT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: venv
	@VENV="$(VENV)" DEMO_CONFIG="$(DEMO_CONFIG)" DEMO_OUT="$(DEMO_OUT)" ENDPOINT="$(ENDPOINT)" \
		DEMO_TIMEOUT="$(DEMO_TIMEOUT)" tools/run_demo.sh

bench: venv
	$(VENV)/bin/python bench/chain_bench.py --config $(BENCH_CONFIG) --input demo/respeaker4-kitchen.flac
	$(VENV)/bin/python bench/capture_latency.py --seconds 20

# The peer benchmark (bench/peers.py): the `bench` extra, the Debian tools the test set is made with
# (flite, festival and its voices), then the whole run with word error rates: on the project's 4-channel
# set (bench/RESULTS.md) and on the shared dev/asr set (bench/RESULTS-asr.md; mono, so the array rows
# are left out there).
# The test set and the outputs are cached outside the repository (bench/testset.py: default_cache).
bench-peers: venv
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[$(PIP_EXTRAS),bench]'
	@PYTHON="$(PYTHON)" VENV="$(VENV)" tools/setup_debs.sh flite festival festvox-us-slt-hts festvox-kallpc16k \
		festvox-kdlpc16k
	nice -n 10 $(VENV)/bin/python bench/peers.py --wer
	nice -n 10 $(VENV)/bin/python bench/peers.py --wer --set-dir ../shared/bench/dev/asr \
		--md bench/RESULTS-asr.md --results bench/results-asr

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

# The package, without its test tools, in its own venv; $(BINDIR)/voxd is what the unit's ExecStart runs.
# A venv is not relocatable: under DESTDIR the staged path is cut out of its scripts (shebangs, activate).
install-venv: | debs
	rm -rf "$(DESTDIR)$(VOXD_HOME)/venv"
	$(PYTHON) -m venv "$(DESTDIR)$(VOXD_HOME)/venv"
	"$(DESTDIR)$(VOXD_HOME)/venv/bin/python" -m pip install --disable-pip-version-check -q .
	@if [ -n "$(DESTDIR)" ]; then \
		grep -rlIF "$(DESTDIR)$(VOXD_HOME)" "$(DESTDIR)$(VOXD_HOME)/venv/bin" "$(DESTDIR)$(VOXD_HOME)/venv/pyvenv.cfg" \
			| xargs -r sed -i "s|$(DESTDIR)$(VOXD_HOME)|$(VOXD_HOME)|g"; fi
	install -d "$(DESTDIR)$(BINDIR)"
	ln -sfn "$(VOXD_HOME)/venv/bin/voxd" "$(DESTDIR)$(BINDIR)/voxd"

# Unit, sysusers entry, docs, and the config unless one is there already (it is the admin's).
install-service:
	install -D -m 0644 systemd/voxd.service "$(DESTDIR)$(UNITDIR)/voxd.service"
	sed -i "s|^ExecStart=/usr/bin/voxd |ExecStart=$(BINDIR)/voxd |" "$(DESTDIR)$(UNITDIR)/voxd.service"
	install -D -m 0644 systemd/voxd.sysusers.conf "$(DESTDIR)$(SYSUSERSDIR)/voxd.conf"
	install -D -m 0644 systemd/README.md "$(DESTDIR)$(DOCDIR)/README.md"
	install -d -m 0755 "$(DESTDIR)$(CONFDIR)"
	@if [ -e "$(DESTDIR)$(CONFDIR)/voxd.yaml" ]; then \
		echo "keeping $(DESTDIR)$(CONFDIR)/voxd.yaml (new default: $(INSTALL_CONFIG))"; \
	else install -m 0644 "$(INSTALL_CONFIG)" "$(DESTDIR)$(CONFDIR)/voxd.yaml"; fi

install: install-venv install-service
	@if [ -z "$(DESTDIR)" ]; then \
		systemd-sysusers "$(SYSUSERSDIR)/voxd.conf"; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "installed; edit $(CONFDIR)/voxd.yaml, then: systemctl enable --now voxd"; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now voxd || true; fi
	rm -f "$(DESTDIR)$(UNITDIR)/voxd.service" "$(DESTDIR)$(SYSUSERSDIR)/voxd.conf" "$(DESTDIR)$(BINDIR)/voxd"
	rm -rf "$(DESTDIR)$(VOXD_HOME)/venv" "$(DESTDIR)$(DOCDIR)"
	rmdir "$(DESTDIR)$(VOXD_HOME)" 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(DESTDIR)$(CONFDIR) and the voxd user (sysusers.d never removes users)"
