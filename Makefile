# tracktalk — two commands: `make run` and `make test`. Everything else is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test check test-packages lint typecheck pytest install install-test clean-db bench bench-quick

# The virtualenv and the project, reinstalled only when pyproject.toml changes.
$(BIN)/tracktalk: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tracktalk needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@# No PostgreSQL on this machine? Bring one through pip (see README, "Embedded PostgreSQL").
	@if ! $(BIN)/python -m app.dev.embedded --has-binaries; then \
		echo "no PostgreSQL binaries found: installing pgserver"; \
		$(BIN)/python -m pip install --quiet -e '.[pgserver]'; fi
	touch $@

$(VENV)/.test-deps: $(BIN)/tracktalk
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/tracktalk
install-test: $(VENV)/.test-deps

# tracktalk stops cleanly on SIGTERM or Ctrl-C and then ends by that signal, as uvicorn has it
# (status 143 or 130): for `make run` that is the normal end, not an error to report.
run: install
	@$(BIN)/tracktalk serve --host $(HOST) --port $(PORT) || { status=$$?; \
		[ $$status -eq 143 ] || [ $$status -eq 130 ] || exit $$status; }

PY_DIRS := $(wildcard app tracktalk tests bench)

lint: install-test
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install-test
	$(BIN)/mypy

# Debian packages the tests drive as real processes (never downloaded binaries), and where the
# tests look for them:
#   chromium   $(CHROMIUM)           the browser tests (tests/system/test_browser.py)
#   nginx      PATH or /usr/sbin     in front of two replicas (tests/system/test_deploy.py)
#   pgbouncer  PATH or /usr/sbin     in front of the request pools (tests/system/test_deploy.py)
#   nodejs npm PATH                  TypeScript from the OpenAPI document (tests/system/test_typescript.py:
#                                    npm ci of tests/typescript/package-lock.json, then tsc)
# Missing ones are installed where that can be done (root, with apt-get); elsewhere `make test`
# stops at once with the command that installs them. `make run` needs none of them.
CHROMIUM ?= /usr/bin/chromium

test-packages:
	@missing=""; \
	test -x $(CHROMIUM) || missing="$$missing chromium"; \
	for tool in nginx pgbouncer; do \
		command -v $$tool >/dev/null || test -x /usr/sbin/$$tool || missing="$$missing $$tool"; \
	done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
		echo "make test: installing the Debian packages its tests drive:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $$missing; \
	else \
		echo "make test: its tests drive Debian packages that are missing:$$missing" >&2; \
		echo "install them, then run make test again:" >&2; \
		echo "    sudo apt-get install -y$$missing" >&2; \
		exit 1; \
	fi

pytest: install-test
	$(BIN)/pytest $(PYTEST_ARGS)

test: test-packages lint typecheck pytest

# The inner loop: lint, types and the unit tests (tests/unit: in-process, no PostgreSQL, no
# process; seconds). `make test` runs them too, with tests/integration and tests/system.
check: lint typecheck
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

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
