# The README's two commands: `make demo` (the main job on the embedded synthetic dataset) and
# `make test`. Both create .venv and install the package into it first; both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint docs docs-serve benchmarks clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo.sh

# One worker per core (pytest-xdist), idle workers taking queued tests from busy ones;
# see tests/conftest.py for what the workers share and what is reproducible.
test: setup
	$(PY) -m pytest -q -n auto --dist worksteal

lint: setup
	$(VENV)/bin/ruff check idc_engine tools benchmarks tests

# The documentation site (mkdocs.yml; strict: a broken link or a missing page is an error) into
# build/site/; docs-serve serves it at http://127.0.0.1:8000 and rebuilds it on every edit.
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs' future, printed on every build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

# The full measurements, one benchmark after the other, into runs/benchmarks (TensorBoard:
# runs/benchmarks/tensorboard). `make benchmarks BENCHMARK_FLAGS=--quick` runs each whole
# command at tiny sizes instead, into runs/benchmarks/quick, in about 5 minutes: a check that
# they still run, not a measurement.
benchmarks: setup
	$(PY) -m benchmarks.all $(BENCHMARK_FLAGS)

clean:
	rm -rf runs .pytest_cache build *.egg-info
