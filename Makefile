# Every target bootstraps what it needs: a fresh machine needs only python3 (>= 3.11) and make.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
SAM_VERSION := 1.170.0
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
SAM := $(TOOLS)/sam/bin/sam
VENV := .venv
VENV313 := .venv-py313
# The Lambda runtime's Python (3.13): pyenv's real binary first (its shims, put first on
# PATH for `sam build`, would call pyenv recursively), else python3.13 on PATH. The suite
# runs on it too, and `sam build` needs it on PATH.
PYENV_DIR := $(or $(PYENV_ROOT),$(HOME)/.pyenv)
PY313 ?= $(firstword $(wildcard $(PYENV_DIR)/versions/3.13*/bin/python3.13) \
	$(shell command -v python3.13 2>/dev/null))

export UV_PYTHON_DOWNLOADS := never
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help env dev test test-loaded fuzz test-unit test-integration test-e2e test-infra test-py313 lint format bench build build-x86_64 deploy lock clean

help:
	@echo "make dev     run the bundle locally (API on http://127.0.0.1:3000)"
	@echo "make test    run the whole test suite (Python 3.11, then 3.13 when available)"
	@echo "make build   sam build (arm64, what deploys) into .aws-sam/build, with bytecode"
	@echo "make build-x86_64   the same for x86_64 into .aws-sam/build-x86_64 (sam local on x86)"
	@echo "make fuzz    fuzz the API through the local gateway (schemathesis), with its figures"
	@echo "make test-loaded   the suite (3.11) while two busy loops keep both cores busy"
	@echo "make lint | bench | deploy | lock | clean"

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --python $(PYTHON)
	@touch $@

env: $(VENV)/.synced

$(VENV313)/.synced: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV313) $(UV) sync --locked --python $(PY313)
	@touch $@

# The SAM CLI pins its own dependencies, so it lives in its own tool environment.
$(SAM): $(UV)
	$(UV) venv --quiet --python $(PYTHON) $(TOOLS)/sam
	$(UV) pip install --quiet --python $(TOOLS)/sam/bin/python aws-sam-cli==$(SAM_VERSION)

dev: env
	$(VENV)/bin/lambdaloop dev

test: env
	@command -v redis-server >/dev/null || echo "note: no redis-server on PATH; tests that kill a real Redis are skipped (.ci/run installs it)"
	$(VENV)/bin/coverage run -m pytest
	$(VENV)/bin/coverage report
	@if [ -n "$(PY313)" ]; then $(MAKE) --no-print-directory test-py313; \
	else echo "note: python3.13 not found; the suite ran on $$($(PYTHON) --version) only"; fi

# No assertion may depend on the machine's speed: the suite must pass while other work
# loads every core. Two busy-loop processes run beside it, and stop with it.
test-loaded: env
	@hogs=""; trap 'kill $$hogs 2>/dev/null' EXIT; \
	for n in 1 2; do (exec $(PYTHON) -c 'while True: pass') & hogs="$$hogs $$!"; done; \
	echo "busy loops: $$hogs"; \
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-py313: $(VENV313)/.synced
	$(VENV313)/bin/pytest -q

# The API fuzzed through the local gateway (schemathesis); `make test` runs it too. Prints
# cases, operations, links covered, failures, cases/s and the stack's memory at start and end.
fuzz: env
	$(VENV)/bin/pytest tests/fuzz -q -p no:cacheprovider

test-unit test-integration test-e2e test-infra: env
	$(VENV)/bin/pytest tests/$(subst test-,,$@)

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: env
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: env
	$(VENV)/bin/python bench/coldstart.py
	$(VENV)/bin/python bench/users.py
	$(VENV)/bin/python bench/consumer.py
	$(VENV)/bin/python bench/publisher.py
	$(VENV)/bin/python bench/fetch.py
	$(VENV)/bin/python bench/pool.py
	$(VENV)/bin/python bench/fanout.py
	$(VENV)/bin/python bench/outbox.py
	$(VENV)/bin/python bench/idempotency_key.py

# The layer's requirements are exported from the lock so the deployed layer and the local
# environment run the same versions.
lock: $(UV)
	$(UV) lock --python $(PYTHON)
	$(UV) export --no-dev --no-emit-project --no-hashes --no-header --no-annotate --quiet \
		--output-file shared/requirements.txt

BUILD_DIR := .aws-sam/build
BUILD_DIR_X86_64 := .aws-sam/build-x86_64
# The variant's source template lives outside its build dir: sam build empties that first.
TEMPLATE_X86_64 := .aws-sam/x86_64/template.yaml

# Lambda's /opt and /var/task are read-only, so a module shipped without bytecode is compiled
# again on every cold start. The runtime's Python compiles it (pyc magic is per minor
# version). unchecked-hash: the deployment zip does not keep mtimes, so timestamp pycs would
# not match their sources and be ignored. -f: without it, compileall leaves a timestamp pyc
# that matches its source as it is.
compile_bytecode = $(PY313) -m compileall -q -f -j 0 --invalidation-mode unchecked-hash $(1)
need_py313 = test -n "$(PY313)" || { echo "sam build needs python3.13 on PATH"; exit 1; }

build: $(SAM)
	@$(need_py313)
	PATH="$(dir $(PY313)):$$PATH" $(SAM) validate --lint
	PATH="$(dir $(PY313)):$$PATH" $(SAM) build --parallel --build-dir $(BUILD_DIR)
	$(call compile_bytecode,$(BUILD_DIR))

# For `sam local -t $(BUILD_DIR_X86_64)/template.yaml` on x86 machines, where the arm64 build
# runs under emulation (too slow to import within the API's timeout). The variant is generated
# from template.yaml (architectures only, checked) and built from the repository root.
build-x86_64: $(SAM) env
	@$(need_py313)
	$(VENV)/bin/python infra/build/arch_variant.py --architecture x86_64 template.yaml $(TEMPLATE_X86_64)
	PATH="$(dir $(PY313)):$$PATH" $(SAM) build --parallel --template-file $(TEMPLATE_X86_64) \
		--base-dir . --build-dir $(BUILD_DIR_X86_64)
	$(call compile_bytecode,$(BUILD_DIR_X86_64))

deploy: build
	$(SAM) deploy --guided

clean:
	rm -rf $(VENV) $(VENV313) .aws-sam .pytest_cache .mypy_cache .ruff_cache
