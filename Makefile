# The README's two commands: `make demo` (the main job on the embedded synthetic dataset) and
# `make test`. Both create .venv and install the package into it first; both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint benchmarks clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo.sh

# One worker per core (pytest-xdist); see tests/conftest.py for what the workers share.
test: setup
	$(PY) -m pytest -q -n auto

lint: setup
	$(VENV)/bin/ruff check idc_engine tools benchmarks tests

benchmarks: setup
	$(PY) -m benchmarks.convert
	$(PY) -m benchmarks.input_pipeline
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.inference

clean:
	rm -rf runs .pytest_cache build *.egg-info
