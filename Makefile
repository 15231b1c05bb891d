# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: install demo test lint docs bench clean

# The package and what it needs to run; the tests, linting and benchmarks add the development extras.
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(DEV)

# The paper's six hyperparameter studies, shortened (5-10 minutes on 2 cores); resumes if interrupted.
demo: install
	$(BIN)/vaeconverge reproduce --quick --out runs/demo
	@echo "demo: report written to runs/demo/index.html"

# One pytest worker per core (pytest-xdist): on 2 cores the suite takes about half the time of one worker.
test: $(DEV)
	$(BIN)/python -m pytest -q -n auto

lint: $(DEV)
	$(BIN)/ruff check .

# The documentation's printouts and tables from real runs, and docs/cli.md from the parser (about 20 minutes).
docs: install
	$(BIN)/python docs/generate.py

# Throughput and memory against a naive loop and Pythae (the optional 'bench' extra); minutes, not seconds.
bench: $(DEV)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
