# Setup installs torch==2.13.0 first, on its own: any looser requirement (from us or a dependency)
# would pull the CUDA build and gigabytes of packages. The CPU wheel is what these machines serve.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wardgate-installed

.PHONY: setup run test bench-proxy docs

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: setup
	$(VENV)/bin/wardgate serve

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

docs: setup
	$(VENV)/bin/wardgate errors --markdown > docs/errors.md

bench-proxy: setup
	$(PY) bench/proxy_overhead.py
