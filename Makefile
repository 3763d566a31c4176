# Two commands a newcomer needs: `make serve` (main job) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= ml-100k
DATA_DIR ?= data
ARTIFACTS ?= artifacts

.PHONY: setup test lint evaluate train bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

evaluate: setup
	$(BIN)/python -m recsys.evaluate --dataset $(DATASET) --model ease --data-dir $(DATA_DIR)

train: setup
	$(BIN)/python -m recsys.train --dataset $(DATASET) --out $(ARTIFACTS)/$(DATASET)/model --data-dir $(DATA_DIR)

bench: setup
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
