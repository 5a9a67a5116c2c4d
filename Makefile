# Run `make help` for the list of targets.
.DEFAULT_GOAL := help

## PYTHON: the Python, 3.10 or later, that creates .venv
PYTHON ?= python3
## VENV: the folder of the host environment
VENV ?= .venv
PY := $(VENV)/bin/python
## RUN_ARGS: options of `stageflow run` for run and compose, e.g. RUN_ARGS="--epochs 20 --no-cache"
RUN_ARGS ?=
## SCHEMA: the data's schema file, for every target (default: $STAGEFLOW_SCHEMA, else schema.toml)
SCHEMA ?=
## PYTEST_ARGS: options of pytest for test and test-fast, e.g. PYTEST_ARGS="-x -k merge"
PYTEST_ARGS ?=
## ROWS: rows in each source that bench makes
ROWS ?= 1000000
## BENCH_ARGS: other options of bench and bench-images (scripts/bench.py --help)
BENCH_ARGS ?=
## LOCK_ARGS: options of `uv pip compile` for lock, e.g. LOCK_ARGS="--upgrade-package pyarrow"
LOCK_ARGS ?=
## BASE_IMAGE: the image the libraries images start FROM (default: python:3.11-slim-bookworm, else base-image's)
BASE_IMAGE ?=
## REGISTRY: where push pushes the images: host:port/prefix
REGISTRY ?=
## DOMINO_PYTHON: the Python submit runs with: a Domino workspace's
DOMINO_PYTHON ?= python3
## DATA_A: source A for submit, as a Domino job sees it (/mnt/data/...)
DATA_A ?=
## DATA_B: source B for submit, as a Domino job sees it
DATA_B ?=
## DATASET: for submit, the Domino dataset holding the sources, name:version (name alone: its latest)
DATASET ?=
## DASK: for submit, 1 gives the data stages on-demand Dask clusters on Domino (stageflow/registry.py's DASK)
DASK ?=
## STAGE: the stage compose-stage runs
STAGE ?=
## FROM: the run directory whose outputs feed compose-stage (default runs/latest)
FROM ?=
## INPUTS: inputs of compose-stage given by hand, "name=value ..." (win over FROM)
INPUTS ?=
## KEEP_DAYS: gc keeps the cache entries used in the last KEEP_DAYS days
KEEP_DAYS ?= 7
## VISIBILITY: who may use the environments that environments creates: Private, Organization or Global
VISIBILITY ?=
## ORGANIZATION: with VISIBILITY=Organization, the organization's name
ORGANIZATION ?=
export BASE_IMAGE
# SCHEMA=path/to/schema.toml switches the data's schema for every target (run, test, images, environments,
# submit, bench, data): it becomes STAGEFLOW_SCHEMA, which flow.py reads (its text is every stage's input) and
# the runner, check-schema and the bench read. No image holds it.
ifneq ($(SCHEMA),)
export STAGEFLOW_SCHEMA := $(abspath $(SCHEMA))
endif

.PHONY: help venv lock run test test-fast test-wheels data docker-up base-image wheels images standard-environment push \
        environments submit compose compose-stage compose-file bench bench-images gc clean

## help: list the targets and the variables they take
# A `## NAME: text` line above a target or a variable describes it; names in capitals are variables.
help:
	@awk '/^## [^:]+: / {sub(/^## /, ""); name = substr($$0, 1, index($$0, ": ") - 1); \
	    line = sprintf("  %-14s %s", name, substr($$0, length(name) + 3)); \
	    if (name ~ /^[A-Z_]+$$/) var = line; else targets = targets line "\n"; next} \
	    var != "" {split($$0, def, / *\?= */); vars = vars var (def[2] != "" ? " (default " def[2] ")" : "") "\n"; var = ""} \
	    END {printf "Targets (make TARGET):\n%s\nVariables (make TARGET NAME=value):\n%s", targets, vars}' $(MAKEFILE_LIST)

# scripts/install.py installs the lock with uv (itself a pin of the lock, installed by pip first) from the
# indexes pip is configured with, else with pip; then the project, editable, from this checkout, with the console
# script `stageflow`. setuptools comes from the lock, so no build environment is fetched. The stamp skips all of
# it when neither the lock nor pyproject.toml changed.
$(VENV)/.installed: requirements-dev.txt pyproject.toml
	@test -x $(PY) || { echo "venv: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version 2>&1))"; $(PYTHON) -m venv $(VENV); }
	@$(PY) scripts/install.py requirements-dev.txt .
	@touch $@

## venv: create .venv with the pinned host dependencies and stageflow itself (other targets do this when needed)
venv: $(VENV)/.installed

# Each lock is compiled from the *.in beside it. The images' locks resolve for the images' platform (wheels
# only, so `make wheels` can fetch them all); a stage's lock keeps the runtime's versions, since its image installs
# over the runtime's; the standard environment's keeps the stages' versions (one wheel of each); the host's lock
# takes every stage's libraries at the images' versions (the host backend runs the stages here), for any platform,
# with every file's hash (`make venv` checks them, whichever index serves it). Existing pins are kept unless
# LOCK_ARGS says otherwise. uv reads its index from UV_DEFAULT_INDEX, not pip.conf.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --python-version 3.11 --custom-compile-command "make lock" $(LOCK_ARGS)
IMAGE_PLATFORM = --python-platform x86_64-manylinux_2_28 --only-binary :all:
STAGE_LOCKS = $(patsubst %.in,%.txt,$(wildcard stages/*/requirements.in))

## lock: regenerate the pinned requirements files from the *.in beside them (LOCK_ARGS=--upgrade-package NAME)
lock: venv
	$(UV_COMPILE) $(IMAGE_PLATFORM) stages/requirements.in -o stages/requirements.txt
	for lock in $(STAGE_LOCKS); do \
	    $(UV_COMPILE) $(IMAGE_PLATFORM) $${lock%.txt}.in -c stages/requirements.txt -o $$lock || exit 1; done
	$(UV_COMPILE) $(IMAGE_PLATFORM) environments/standard/requirements.in \
	    $(addprefix -c ,stages/requirements.txt $(STAGE_LOCKS)) -o environments/standard/requirements.txt
	$(UV_COMPILE) --universal --generate-hashes requirements.in requirements-dev.in stages/requirements.in $(STAGE_LOCKS:.txt=.in) \
	    $(addprefix -c ,stages/requirements.txt $(STAGE_LOCKS)) -o requirements-dev.txt
	$(UV_COMPILE:3.11=3.10) --universal tests/locks/workspace.in -o tests/locks/workspace.txt
	$(UV_COMPILE) --universal tests/locks/python-domino.in -o tests/locks/python-domino.txt

## run: run the whole flow locally on the bundled data; prints a stage summary, headline metrics and report paths
run: venv
	$(PY) -m stageflow run $(RUN_ARGS)

## test: run the whole test suite (container tests included: sets up Docker, base image, wheels, images)
test: venv images standard-environment test-wheels
	$(PY) -m pytest $(PYTEST_ARGS)

## test-fast: run the tests that need no Docker
test-fast: venv test-wheels
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

## test-wheels: download the wheels of the tests' other venvs (workspace Pythons 3.10-3.13, python-domino, pip install .) once
test-wheels: venv
	$(PY) tests/wheelhouses.py

## docker-up: install Docker from Debian's packages if missing and start the daemon (needs root)
docker-up:
	scripts/docker-up.sh

## base-image: build a local base image from Debian's packages when the default base cannot be pulled
base-image: docker-up
	@if [ -n "$(BASE_IMAGE)" ]; then echo "BASE_IMAGE=$(BASE_IMAGE) given: no local base needed"; \
	elif docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1; then echo "using local python:3.11-slim-bookworm"; \
	else scripts/base-image.sh stageflow-base:bookworm-py311; fi

## wheels: download every image's pinned wheels into wheels/ (the images install only from there)
wheels: venv
	$(PY) -m stageflow wheels

## images: build the five stage images (only those whose version changed)
images: venv base-image wheels
	$(PY) -m stageflow images-build

## standard-environment: build the local standard environment, the image of a Domino flow's tasks that have no image of their own (docs/stages.md)
standard-environment: venv base-image wheels
	$(PY) -m stageflow standard-environment

## push: push the stage images to REGISTRY=host:port/prefix and print their digests
push: images
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=host:port/prefix"; exit 2; }
	$(PY) -m stageflow images-push --registry $(REGISTRY)

## environments: write each stage's Domino environment to build/environments.json; with Domino's API at hand (docs/domino.md), create/revise them and wait for the builds (VISIBILITY=Private|Organization|Global ORGANIZATION=name)
environments: venv
	$(PY) -m stageflow environments $(if $(VISIBILITY),--visibility "$(VISIBILITY)") $(if $(ORGANIZATION),--organization "$(ORGANIZATION)")

## submit: in a Domino workspace, check what a remote run needs, then pyflyte run --remote (DATASET=name:version DATA_A=/mnt/data/... DATA_B=...; DASK=1: the data stages on on-demand Dask clusters)
submit:
	@test -n "$(DATA_A)" && test -n "$(DATA_B)" || { echo "usage: make submit [DATASET=iris:3] DATA_A=/mnt/data/iris/a.csv DATA_B=/mnt/data/iris/b.jsonl"; exit 2; }
	$(if $(DASK),STAGEFLOW_DASK=$(DASK)) $(DOMINO_PYTHON) -m stageflow submit --data-path-a "$(DATA_A)" --data-path-b "$(DATA_B)" $(if $(DATASET),--dataset "$(DATASET)")

## compose: run the whole flow through docker-compose.yml (fake /workflow trees in .workflow/)
compose: images
	$(PY) -m stageflow run --backend compose --run-dir .workflow $(RUN_ARGS)

## compose-stage: run one stage through docker-compose.yml, its tree prepared in .workflow/ (STAGE=merge; inputs from FROM=runs/latest or INPUTS="name=path ...")
compose-stage: images
	@test -n "$(STAGE)" || { echo 'usage: make compose-stage STAGE=<stage> [FROM=RUN_DIR] [INPUTS="name=value ..."]'; exit 2; }
	$(PY) -m stageflow compose-stage $(STAGE) $(if $(FROM),--from "$(FROM)") $(foreach i,$(INPUTS),--input "$(i)")

## compose-file: regenerate docker-compose.yml from the stage registry (stageflow/registry.py)
compose-file: venv
	$(PY) -m stageflow compose-file

## data: regenerate the bundled samples from scikit-learn's data: data/ (iris) and examples/wine/ (SCHEMA=: one)
data: venv
	$(PY) scripts/make_data.py $(if $(SCHEMA),--schema $(SCHEMA))

## bench: the flow against seed-style stages, sklearn's fit, plain flytekit tasks on 2 x ROWS rows (docs/performance.md)
bench: venv
	$(PY) scripts/bench.py --rows $(ROWS) $(BENCH_ARGS)

## bench-images: time `make images` after an edit of the runtime code and of one stage's main.py (docs/performance.md)
bench-images: venv base-image wheels
	$(PY) scripts/bench_images.py $(BENCH_ARGS)

## gc: remove stage-cache entries not used in KEEP_DAYS days (7) nor by the newest run, and images of old versions
gc: venv
	$(PY) -m stageflow gc --keep-days $(KEEP_DAYS)

## clean: gc, then remove run directories and the test cache (keeps .venv and what a re-run needs)
clean: gc
	rm -rf runs .workflow .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
