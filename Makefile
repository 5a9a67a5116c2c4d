# Run `make help` for the list of targets.
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv run test data clean

## help: list the targets
help:
	@awk 'BEGIN {FS = ": "} /^## / {sub(/^## /, ""); split($$0, p, ": "); printf "  %-12s %s\n", p[1], substr($$0, length(p[1]) + 3)}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

## venv: create .venv with the pinned host dependencies (other targets do this when needed)
venv: $(VENV)/.installed

## run: run the whole flow locally on the bundled data; prints a stage summary, headline metrics and report paths
run: venv
	$(PY) -m stageflow run $(RUN_ARGS)

## test: run the whole test suite
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## data: regenerate the bundled sample sources in data/ from scikit-learn's iris data
data: venv
	$(PY) scripts/make_data.py

## clean: remove run directories and caches (keeps .venv)
clean:
	rm -rf runs .workflow .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
