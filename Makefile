# The two set-up commands of the README: `make run` and `make test`. Each creates .venv when
# missing and installs what it needs (again whenever setup.cfg changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= settings.toml
# The pages' JavaScript from npm (socket.io-client), pinned by the lockfile; the app serves it.
UI := server/ui
UI_INSTALLED := $(UI)/node_modules/.package-lock.json

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml $(UI_INSTALLED)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(UI_INSTALLED): $(UI)/package.json $(UI)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make: npm is missing; the pages under /ui/ need it once, at set-up: install Node.js and npm (Debian: apt install npm)" >&2; exit 1; }
	npm ci --prefix $(UI) --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/python main.py --config $(CONFIG)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(UI)/node_modules state .mypy_cache .ruff_cache .pytest_cache
