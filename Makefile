# Quick start: `make run` (local system) and `make test` (every test). Both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := worker-python/requirements.txt coordinator/requirements.txt \
	infra/requirements.txt scripts/requirements.txt tests/requirements.txt

.PHONY: setup workers run stop test test-python test-node lint format boot-test bench soak stack-outputs clean help

help:
	@echo "make run     set up, start both workers and the page on http://localhost:8501"
	@echo "make test    set up, then run every test (pytest + node --test)"
	@echo "make lint    ruff check + ruff format --check, and worker-nodejs's npm lint; make format fixes"
	@echo "make workers start both workers in the background (PYTHON_WORKERS=2 NODEJS_WORKERS=2: more); make stop stops them"
	@echo "make run TLS=1 (or MTLS=1)  the same over verified TLS with a local CA and a token, as in the cloud"
	@echo "make bench   benchmarks (tables of medians and ratios)"

setup: $(VENV)/.installed worker-nodejs/node_modules/.installed infra/policy/.venv/.installed

# The policy pack has its own venv: pulumi-policy pins protobuf 5.29, the workers' OpenTelemetry 6.
infra/policy/.venv/.installed: infra/policy/requirements.txt
	test -x infra/policy/.venv/bin/python || $(PYTHON) -m venv infra/policy/.venv
	infra/policy/.venv/bin/python -m pip install --quiet --disable-pip-version-check -r infra/policy/requirements.txt
	touch $@

$(VENV)/.installed: $(REQUIREMENTS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(addprefix -r ,$(REQUIREMENTS))
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

worker-nodejs/node_modules/.installed: worker-nodejs/package.json worker-nodejs/package-lock.json
	cd worker-nodejs && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# TLS=1: the workers serve HTTPS with a local CA and a token, as the cloud does; MTLS=1 adds client certificates.
# Only from the command line: a TLS or MTLS variable that happens to be in the shell's environment is ignored.
cli_flag = $(if $(filter command line,$(origin $(1))),$(if $(filter-out 0,$($(1))),$(2)))
LOCAL_FLAGS = $(call cli_flag,TLS,--tls) $(call cli_flag,MTLS,--mtls)

workers: setup
	$(PY) -m scripts.local start $(LOCAL_FLAGS)

run: setup
	$(PY) -m scripts.local run $(LOCAL_FLAGS)

stop:
	@test -x $(PY) && $(PY) -m scripts.local stop || true

test: setup test-node test-python

test-node:
	cd worker-nodejs && node --test test/

# Ruff's rules and excludes live in pyproject.toml; worker-nodejs's linters in its package.json
# (run only once it has a "lint" / "format" script).
has_npm_script = node -e 'process.exit(require("./worker-nodejs/package.json").scripts?.["$(1)"] ? 0 : 1)'

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@if $(call has_npm_script,lint); then cd worker-nodejs && npm run --silent lint; \
	else echo "worker-nodejs: no npm lint script, skipped"; fi

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	@if $(call has_npm_script,format); then cd worker-nodejs && npm run --silent format; \
	else echo "worker-nodejs: no npm format script, skipped"; fi

test-python:
	$(PY) -m pytest $(PYTEST_ARGS)

# Only the real first boot of each role's user-data (systemd-nspawn; root, mmdebstrap,
# systemd-container), with its timing table; `make test` runs it too.
boot-test: setup
	$(PY) -m pytest tests/infra/test_boot.py $(PYTEST_ARGS)

# Loopback, WAN (network namespace; needs root + iproute2, else one skip line), batch, page.
bench: setup
	$(PY) -m scripts.bench $(BENCH_ARGS)
	$(PY) -m scripts.bench_wan
	$(PY) -m scripts.bench_batch
	$(PY) -m scripts.bench_page
	$(PY) -m scripts.bench_observe
	$(PY) -m scripts.bench_tls
	$(PY) -m scripts.bench_strip

soak: setup
	$(PY) -m scripts.soak $(SOAK_ARGS)

stack-outputs: setup
	$(PY) -m scripts.stack_outputs $(STACK_OUTPUTS_ARGS)

clean: stop
	rm -rf $(VENV) infra/policy/.venv worker-nodejs/node_modules .run .artifacts .ruff_cache
