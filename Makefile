# scmoe-eval: every target installs what it needs into .venv first (pinned in requirements/lock.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
MODEL ?= mistralai/Mixtral-8x7B-v0.1
PYTEST_WORKERS ?= 2
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline

.PHONY: install test demo reproduce-gsm8k reproduce-paper sweep-beta sweep-weak-k sweep-alpha paper-table bench clean

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c requirements/lock.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .cache results/demo
