# Setup installs torch==2.13.0 first, on its own: any looser requirement (from us or a dependency)
# would pull the CUDA build and gigabytes of packages. The CPU wheel is what these machines serve.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.wardgate-installed
TEST_STAMP := $(VENV)/.wardgate-test-installed

.PHONY: setup setup-test deploy-tools run test bench-proxy docs

# `make run` installs what running needs; the test extras (pytest, ruff, mkdocs, ...) come with `make test`.
setup: $(RUN_STAMP)
setup-test: $(TEST_STAMP)

# tests/test_deploy.py checks deploy/ with promtool (Debian's prometheus package) and nginx: installed
# when missing (as root; only `make test` needs them, not `make run`); the services the packages may
# start are stopped, only the binaries are wanted.
deploy-tools:
	@command -v promtool >/dev/null && command -v nginx >/dev/null || { \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus nginx && \
		for service in prometheus nginx; do \
			systemctl disable --now $$service >/dev/null 2>&1 || service $$service stop >/dev/null 2>&1 || true; \
		done; }

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: setup
	$(VENV)/bin/wardgate serve

test: setup-test deploy-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The generated pages: the error catalogue and the configuration and CLI references (tests compare them).
docs: setup-test
	$(VENV)/bin/wardgate errors --markdown > docs/errors.md
	$(PY) -m gateway.reference docs/reference
	$(VENV)/bin/mkdocs build --strict --site-dir .site

bench-proxy: setup-test
	$(PY) bench/proxy_overhead.py
