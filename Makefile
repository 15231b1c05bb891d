# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/vaeconverge train --data digits --model mlp --likelihood bernoulli --objective elbo \
	    --samples 1 --beta 1 --batch-size 64 --optimizer adam --lr 1e-3 --schedule epoch-sqrt \
	    --steps 3000 --seed 0 --out runs/demo
	@echo "demo: plot written to runs/demo/convergence.png"

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# Throughput and memory against a naive loop and Pythae (the optional 'bench' extra); minutes, not seconds.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
