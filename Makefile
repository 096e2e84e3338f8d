# The README's two commands are `make run` and `make test`; CI runs .ci/run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test book sync lint clean

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: on this project's machines 2.13.0 is the CPU build on disk; elsewhere pip
	# picks the build for your platform. Installing it first keeps pip from pulling another.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]" -c .ci/constraints.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (hiermix-pyro)" > /dev/null
	touch $(STAMP)

run: $(STAMP)  ## train the default model (vae) on the embedded pbmc68k data
	mkdir -p runs
	$(BIN)/papermill notebooks/train.ipynb runs/train-vae-pbmc68k.ipynb $(PARAMS)

test: $(STAMP)  ## unit tests + every notebook in smoke mode
	$(BIN)/pytest

sync: $(STAMP)  ## regenerate the .ipynb files from their MyST sources
	$(BIN)/jupytext --to ipynb --update notebooks/*.md

lint: $(STAMP)  ## ruff: lint and format check (configuration in pyproject.toml)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

book: $(STAMP)  ## build the Jupyter Book (notebooks executed in smoke mode) into _build/html
	SMOKE_TEST=1 $(BIN)/jupyter-book build . --warningiserror --keep-going

clean:
	rm -rf _build runs
