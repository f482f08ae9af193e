# The two commands of the README: `make dev` and `make test`. Everything they need is
# installed from here (a virtualenv with the package, and Debian packages when missing).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps dev test lint format artifacts clean bench

# redis-server runs the platform; prometheus (with promtool) checks metrics, rules and
# dashboards in the tests.
system-deps:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from Debian"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# checkov has a large dependency tree of its own: it gets a virtualenv of its own.
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q "checkov>=3.2"
	touch $@

install: system-deps $(BIN)/.installed

dev: install  ## Run Redis, the API, three worker tiers and beat on this machine.
	$(BIN)/conveyor dev

# The benchmarks print figures (bench/README.md has the method and the latest table); they
# are not tests. wrk, from Debian, is the load generator.
bench: install  ## Run every benchmark (about 26 minutes on 2 cores).
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m bench.accept
	$(BIN)/python -m bench.workers
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.growth
	$(BIN)/python -m bench.probes

lint: install
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

artifacts: install  ## Regenerate observability/ dashboards, rule tests and metric catalogue.
	$(BIN)/python -m conveyor.telemetry.artifacts

test: lint $(CHECKOV_VENV)/.installed  ## Lint, type-check and run the whole test suite (what CI runs).
	$(BIN)/pytest

format: install
	$(BIN)/ruff check --fix services tests bench
	$(BIN)/ruff format services tests bench

clean:
	rm -rf $(VENV) .conveyor .pytest_cache .mypy_cache .ruff_cache
