# make demo: the workflow on the offline demo. make test: every gate and test.
# Both create .venv from the pinned requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test lint clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python resources/demo/run_demo.py --cores $(CORES)

lint: $(STAMP)
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

clean:
	rm -rf results logs .snakemake resources/demo/build benchmarks/cohort benchmarks/plan benchmarks/batch
