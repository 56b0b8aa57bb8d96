# The commands developers use. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install install-dev services lint bench train evaluate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e ".[train,dev,serve]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: set up (light install, LiteRT only) and classify the bundled samples on the embedded default
demo: install
	$(VENV)/bin/hematovision analyze samples/cells -o report

## test: the whole suite (unit, API, TensorFlow, integration on Redis+Postgres and embedded SQLite)
test: install-dev services
	$(PY) -m pytest

services:
	bash .ci/services

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install-dev services
	$(PY) -m bench.throughput

train: install-dev
	$(PY) -m training.train --config training/configs/mnv2_160_long.json

clean:
	rm -rf var report bench/out .pytest_cache
