# kubetune developer commands. `make test` and `make demo` work from a fresh clone:
# they create .venv, install the CPU build of torch first (a bare `torch` would pull CUDA), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: setup test test-fast demo generate validate-examples images clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest

# The API, CLI and operator tests only (no model training).
test-fast: setup
	$(PY) -m pytest tests/api tests/test_cli.py tests/controller

demo: setup
	$(PY) -m kubetune_trainer.demo --out demo-output

# Regenerate the CRD (crds/ and the chart's copy) and the chart's RBAC rules from the code.
generate: setup
	$(VENV)/bin/kubetune generate

validate-examples: setup
	$(VENV)/bin/kubetune validate examples/*.yaml

# Container images, tagged with the chart's appVersion (needs a Docker engine).
VERSION := $(shell awk '/^appVersion:/ {gsub(/"/, "", $$2); print $$2}' charts/kubetune/Chart.yaml)
REGISTRY ?= ghcr.io/kubetune
images:
	docker build -f operator/Dockerfile -t $(REGISTRY)/operator:$(VERSION) .
	docker build -f trainer/Dockerfile -t $(REGISTRY)/trainer:$(VERSION) .

clean:
	rm -rf $(VENV) demo-output .pytest_cache
