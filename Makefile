# kubetune developer commands. `make test` and `make demo` work from a fresh clone:
# they create .venv, install the CPU build of torch first (a bare `torch` would pull CUDA), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: setup test test-fast demo crd validate-examples clean

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

crd: setup
	$(VENV)/bin/kubetune crd > crds/finetunejobs.kubetune.dev.yaml

validate-examples: setup
	$(VENV)/bin/kubetune validate examples/*.yaml

clean:
	rm -rf $(VENV) demo-output .pytest_cache
