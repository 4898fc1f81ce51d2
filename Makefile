# tracktalk — two commands: `make run` and `make test`. Everything else is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint typecheck pytest install install-test clean-db bench bench-quick

# The virtualenv and the project, reinstalled only when pyproject.toml changes.
$(BIN)/tracktalk: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tracktalk needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@# No PostgreSQL on this machine? Bring one through pip (see README, "Embedded PostgreSQL").
	@if ! $(BIN)/python -m app.embedded --has-binaries; then \
		echo "no PostgreSQL binaries found: installing pgserver"; \
		$(BIN)/python -m pip install --quiet -e '.[pgserver]'; fi
	touch $@

$(VENV)/.test-deps: $(BIN)/tracktalk
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/tracktalk
install-test: $(VENV)/.test-deps

run: install
	$(BIN)/tracktalk serve --host $(HOST) --port $(PORT)

PY_DIRS := $(wildcard app tests bench deploy)

lint: install-test
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install-test
	$(BIN)/mypy

pytest: install-test
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean-db:
	rm -rf .tracktalk

# Benchmarks (bench/README.md): bench-only packages, and Debian's redis-server for the Redis baseline.
BENCH_DEPS = $(BIN)/python -c 'import picows, redis, matplotlib, psutil, websockets, httpx' 2>/dev/null || \
	$(BIN)/python -m pip install --quiet -e '.[bench]'; \
	command -v redis-server >/dev/null || { apt-get install -y -qq redis-server >/dev/null || \
	{ apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }; }

bench: install
	@$(BENCH_DEPS)
	$(BIN)/python -m bench.run --profile $(BENCH_ARGS)

bench-quick: install
	@$(BENCH_DEPS)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)
