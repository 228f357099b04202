# kubetune developer commands. `make test` and `make demo` work from a fresh clone:
# they create .venv, install torch first (pinned, so that the project's own torch requirement adds nothing), then
# the project. Which build of torch pip takes is pip's choice from the indexes it knows: on Linux, PyPI's torch is
# the CUDA build (several GB). For the CPU build (about 200 MB) name PyTorch's CPU index:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
export OMP_NUM_THREADS ?= 1

.PHONY: setup lint test test-fast test-images demo generate validate-examples images clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# ruff's settings (rules, line length, first-party packages) are in pyproject.toml.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest --durations=25

# Everything that trains no model (the API, the CLIs, the operator, the chart, the docs, the doctor) and lint.
test-fast: setup lint
	$(PY) -m pytest tests/api tests/test_cli.py tests/test_testing_package.py tests/controller tests/usercli tests/charts tests/docs \
		tests/doctor

demo: setup
	$(PY) -m kubetune_trainer.demo --out demo-output

# Regenerate the CRD (crds/ and the chart's copy) and the chart's RBAC rules from the code.
generate: setup
	$(VENV)/bin/kubetune generate

validate-examples: setup
	$(VENV)/bin/kubetune validate examples/*.yaml

# Container images, tagged with the chart's appVersion (needs a Docker engine). The bases are build
# arguments, left to the Dockerfiles' defaults unless set, e.g. for older NVIDIA drivers:
#   make images TRAINER_BASE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime TRAINER_TAG_SUFFIX=-cu124
VERSION := $(shell awk '/^appVersion:/ {gsub(/"/, "", $$2); print $$2}' charts/kubetune/Chart.yaml)
REGISTRY ?= ghcr.io/kubetune
OPERATOR_BASE ?=
TRAINER_BASE ?=
TRAINER_TAG_SUFFIX ?=
images:
	docker build -f operator/Dockerfile $(if $(OPERATOR_BASE),--build-arg PYTHON_IMAGE=$(OPERATOR_BASE)) \
		-t $(REGISTRY)/operator:$(VERSION) .
	docker build -f trainer/Dockerfile $(if $(TRAINER_BASE),--build-arg BASE_IMAGE=$(TRAINER_BASE)) \
		-t $(REGISTRY)/trainer:$(VERSION)$(TRAINER_TAG_SUFFIX) .

# Both images built on a local Docker engine (Debian's docker.io installed and dockerd started when
# missing; stand-in bases, as CI reaches no registry) and run: the operator's CLI, the chart's operator
# against the test API server, and the pod it builds run in the trainer image (tests/images/).
test-images: setup
	KUBETUNE_IMAGE_TESTS=1 $(PY) -m pytest tests/images

clean:
	rm -rf $(VENV) demo-output .pytest_cache
