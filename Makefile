# OpenSpeedy: `make demo` and `make test` work on a fresh Debian 12 / Python 3.11 machine without a GPU.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration serve repository bench-cpu clean

# One pinned set of packages, verified together (requirements/lock.txt), then the package itself.
$(INSTALLED): requirements/lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(INSTALLED)

repository: $(INSTALLED)
	$(PY) -m openspeedy.export --tiny --output build/tiny_repository

demo: $(INSTALLED)
	$(VENV)/bin/openspeedy demo --out out/demo.mp4

serve: $(INSTALLED)
	$(VENV)/bin/openspeedy serve

test: $(INSTALLED)
	$(PY) -m pytest -ra

test-unit: $(INSTALLED)
	$(PY) -m pytest -ra -m "not server"

test-integration: $(INSTALLED)
	$(PY) -m pytest -ra -m server

clean:
	rm -rf build out .pytest_cache
