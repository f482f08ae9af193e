# The two commands of the README: `make dev` and `make test`. Everything they need is
# installed from here: `make dev` a virtualenv with the package and what running it needs
# (plus redis-server, curl and jq from Debian when missing); `make test` adds the test, lint
# and type-check tools (the `dev` extra) and promtool.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PIP    := $(BIN)/pip install --disable-pip-version-check --progress-bar on

.PHONY: install install-dev python-version system-deps system-deps-test dev test lint format \
	artifacts clean bench

# Conveyor needs Python 3.11 or newer.
python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "Conveyor needs Python 3.11 or newer; '$(PYTHON)' is" \
			"$$($(PYTHON) --version 2>/dev/null || echo not found)." \
			"Run: make $(MAKECMDGOALS) PYTHON=python3.12 (or any python >= 3.11)"; exit 1; }

# Debian packages, installed only when missing: $(1) is a list of command:package pairs.
define debian-packages
	@missing=""; for pair in $(1); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "==> installing$$missing from Debian"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null; \
	fi
endef

# redis-server runs the platform; the README's tour uses curl and jq.
system-deps:
	$(call debian-packages,redis-server:redis-server curl:curl jq:jq)

# The tests also need redis-sentinel (the HA tests), promtool (Debian's prometheus: checks
# metrics, rules and dashboards), faketime (a worker with a skewed clock) and chromium (the
# console's browser tests, driven by Playwright: no browser is downloaded).
system-deps-test: system-deps
	$(call debian-packages,redis-sentinel:redis-sentinel promtool:prometheus faketime:faketime chromium:chromium)

$(BIN)/.installed-run: pyproject.toml | python-version
	@echo "==> virtualenv $(VENV) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	@echo "==> conveyor and what running it needs"
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed-run
	@echo "==> test, lint and type-check tools (the dev extra)"
	$(PIP) -e ".[dev]"
	touch $@

# checkov has a large dependency tree of its own: it gets a virtualenv of its own.
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed: | python-version
	@echo "==> checkov, in a virtualenv of its own ($(CHECKOV_VENV))"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --disable-pip-version-check --progress-bar on --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --disable-pip-version-check --progress-bar on "checkov>=3.2"
	touch $@

install: system-deps $(BIN)/.installed-run

install-dev: system-deps-test $(BIN)/.installed-dev

dev: install  ## Run Redis, the API, three worker tiers, beat and the exporter on this machine.
	$(BIN)/conveyor dev

# The benchmarks print figures (bench/README.md has the method and the latest table); they
# are not tests. wrk, from Debian, is the load generator; valgrind counts Redis' instructions.
bench: install  ## Run every benchmark (about 35 minutes on 2 cores).
	$(call debian-packages,wrk:wrk valgrind:valgrind gcc:gcc)
	$(BIN)/python -m bench.accept
	$(BIN)/python -m bench.workers
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.growth
	$(BIN)/python -m bench.probes
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.fairness
	$(BIN)/python -m bench.workflows
	$(BIN)/python -m bench.console
	$(BIN)/python -m bench.redis_cost
	$(BIN)/python -m bench.redis_instructions
	$(BIN)/python -m bench.api_instructions
	$(BIN)/python -m bench.api_instructions --batch 1000
	$(BIN)/python -m bench.e2e

lint: install-dev
	$(BIN)/ruff check services tests bench tools
	$(BIN)/ruff format --check services tests bench tools
	$(BIN)/mypy

artifacts: install  ## Regenerate observability/ dashboards, rule tests and metric catalogue.
	$(BIN)/python -m tools.observability.artifacts

# Two pytest processes on the two cores (pytest-xdist): the timed fault tests run one after
# another in one of them, everything else in the other (tests/conftest.py). `PYTEST_LANES=`
# runs the suite in one process.
PYTEST_LANES ?= -n 2

test: lint $(CHECKOV_VENV)/.installed  ## Lint, type-check and run the whole test suite (what CI runs).
	$(BIN)/pytest $(PYTEST_LANES)

format: install-dev
	$(BIN)/ruff check --fix services tests bench tools
	$(BIN)/ruff format services tests bench tools

clean:
	rm -rf $(VENV) .conveyor .pytest_cache .mypy_cache .ruff_cache
