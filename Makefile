# The two set-up commands of the README: `make run` and `make test`. Each creates .venv when
# missing and installs what it needs (again whenever setup.cfg changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= settings.toml
# The pages' JavaScript from npm (socket.io-client), pinned by the lockfile; the app serves it.
UI := server/ui
UI_INSTALLED := $(UI)/node_modules/.package-lock.json

.PHONY: run test lint typecheck pytest bench fuzz clean

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

# The benchmarks run framehub and their reference servers on the runtime dependencies alone, as a
# single-box deployment has them: in .venv, the test extras make every framehub process import
# redis (python-socketio's managers try it) and requests (python-engineio's client, through
# schemathesis), about 10 MB more. The harness itself, wrk's driver, stays in .venv.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: setup.cfg pyproject.toml $(UI_INSTALLED)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e .
	touch $@

bench: $(VENV)/.installed-test $(BENCH_VENV)/.installed
	$(BIN)/python -m bench --server-python $(BENCH_VENV)/bin/python

# Fuzzing, not part of `make test`: FUZZ_SECONDS per target, every target unless FUZZ_TARGETS
# names some (frames archives settings cookies multipart probe).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=

# atheris has wheels for Linux x86_64 and needs clang elsewhere; without it, fuzz uses hypothesis.
$(VENV)/.installed-fuzz: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	$(BIN)/python -m pip install --quiet atheris || echo "make: atheris did not install; fuzzing with hypothesis" >&2
	touch $@

fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python -m fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(UI)/node_modules state .mypy_cache .ruff_cache .pytest_cache
