# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED_DATA := $(abspath ../shared/data)
export FLAN_JAX_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export TF_CPP_MIN_LOG_LEVEL ?= 3
PYTEST_WORKERS ?= 2

.PHONY: install install-test demo test lint bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PIP) install -q -e '.[test,hf,beam]'  # beam: flan-jax cache (tests/cache_test.py)
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/flan-jax demo

test: install-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup tests  # loadgroup: a journey file shares one trained run

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check flan_jax tests bench
	$(VENV)/bin/shellcheck -x tpu_scripts/*.sh

bench: install-test
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
