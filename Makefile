# make demo: the workflow on the offline demo (PATCHES=1: with patches). make test: every gate and test.
# make test-fast: the gates and the tests not marked slow (no daemons, no large fixtures).
# Each creates .venv on first use: requirements.txt for the demo, requirements-dev.txt to test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CORES ?= 2

.PHONY: demo test test-fast lint clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/python resources/demo/run_demo.py --cores $(CORES) $(if $(PATCHES),--patches)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy workflow/scripts/slidestock testkit/slidestock_testkit
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakemake --lint --configfile config/demo.yaml

test: lint
	bash resources/install-browser.sh
	bash resources/slurm/install.sh
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf results logs .snakemake demo demo-gdc demo-patches resources/demo/build
