# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# The paper's six hyperparameter studies, shortened (5-10 minutes on 2 cores); resumes if interrupted.
demo: install
	$(BIN)/vaeconverge reproduce --quick --out runs/demo
	@echo "demo: report written to runs/demo/index.html"

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# Throughput and memory against a naive loop and Pythae (the optional 'bench' extra); minutes, not seconds.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
