# Two commands: `make demo` (train on the embedded data, then serve the dashboard) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PORT ?= 5006

.PHONY: setup chromium demo lint test test-all test-torchgeo bench clean

$(STAMP): pyproject.toml environment.yml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the browser tests (Playwright never downloads a browser).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

DEMO := runs/embedded_demo

# The recipe of record (atomizer.experiments.RECORD); one progress line per epoch of each run (model, seed,
# fold, epoch, loss, time left), streamed from the notebook by papermill.
demo: setup
	PYTHONUNBUFFERED=1 $(PY) -m atomizer experiment run experiments/embedded_demo.yaml
	PYTHONMALLOC=malloc $(PY) -m atomizer serve --port $(PORT) --results $(DEMO) --no-show \
	  --checkpoint $(DEMO)/run/atomizer/seed-0_fold-0/checkpoints/best.pt

# ruff (lint and format check) and mypy over the whole package (atomizer/)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup chromium lint
	$(PY) -m pytest -m "not slow and not gpu" -q -p no:cacheprovider --durations=15

test-all: setup chromium
	$(PY) -m pytest -m "" -q

# The TorchGeo bridge (atomizer.data.torchgeo, atomizer.models.torchgeo) tested with TorchGeo installed, in a
# venv of its own: torchgeo needs torchvision, whose wheels (0.29.1) need torch 2.14.1 (CUDA builds; they run on
# CPU), not the CPU torch of .venv. `make test` runs the same tests without TorchGeo: those needing it skip.
TG_VENV := .venv-torchgeo
TG_PY := $(TG_VENV)/bin/python
TG_STAMP := $(TG_VENV)/.installed

$(TG_STAMP): pyproject.toml
	test -x $(TG_PY) || $(PYTHON) -m venv $(TG_VENV)
	$(TG_PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e '.[dev,torchgeo]'
	touch $(TG_STAMP)

test-torchgeo: $(TG_STAMP)
	$(TG_PY) -m pytest -q -p no:cacheprovider tests/data/test_torchgeo.py

bench: setup
	$(PY) -m atomizer bench --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
