# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint mosquitto tmux deploy-tools bench-real clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; }

# The operator view's end-to-end test runs `vigil-agent top` in a real terminal: tmux.
tmux:
	@command -v tmux >/dev/null || { \
	  echo "installing tmux (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends tmux; }

# What tests/deploy runs: prometheus + promtool, amtool, openssl, systemd-analyze (Debian packages).
deploy-tools:
	@missing=""; \
	for t in prometheus:prometheus promtool:prometheus amtool:prometheus-alertmanager \
	         openssl:openssl systemd-analyze:systemd; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; \
	done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing% }" ]; then \
	  echo "installing $$missing(apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP) mosquitto
	$(BIN)/python -m sim.demo

test: $(STAMP) mosquitto tmux deploy-tools
	$(BIN)/pytest

# Vigil on real sensor data (../shared/data) against two classic detectors (~5 minutes).
bench-real: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/real.py --data ../shared/data

lint: $(STAMP)
	$(BIN)/ruff check agent training sim tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
