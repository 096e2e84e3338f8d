# The README's two commands are `make run` and `make test`; CI runs .ci/run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# scvi-tools (< 1.5 on Python 3.11) gets an environment of its own, so that torch stays pinned in .venv
SCVI_VENV ?= .venv-scvi
STUDY ?= smoke
CORES ?= 2

.PHONY: run test book book-check sync lint clean bench scvi-env

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
	# the inline backend: with MPLBACKEND=Agg in the environment (CI sets it) figures would print as text
	MPLBACKEND=module://matplotlib_inline.backend_inline SMOKE_TEST=1 $(BIN)/jupyter-book build . --warningiserror --keep-going

# a part of a study: PART="datasets=pbmc_sorted9 seeds=0-4 methods=vae,momix"; other snakemake
# options in SNAKEMAKE_ARGS (e.g. -n for a dry run)
bench: $(STAMP)  ## run a benchmark study (benchmarks/studies/$(STUDY).yaml) with Snakemake
	$(BIN)/snakemake -s benchmarks/Snakefile --cores $(CORES) $(SNAKEMAKE_ARGS) --config study=$(STUDY) $(PART)

$(SCVI_VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(SCVI_VENV)
	$(SCVI_VENV)/bin/pip install -q --upgrade pip
	$(SCVI_VENV)/bin/pip install -q torch==2.13.0  # first, as for .venv: the pinned torch, not scvi-tools' choice
	$(SCVI_VENV)/bin/pip install -q -e ".[scvi]" -c .ci/constraints.txt
	touch $@

scvi-env: $(SCVI_VENV)/.installed  ## the scvi-tools environment the benchmark's SCVI peers run in

book-check: $(STAMP)  ## open every page of _build/html in headless Chromium (after make book; needs chromium, chromium-driver)
	HIERMIX_BOOK_HTML=_build/html $(BIN)/pytest tests/test_book_browser.py -p no:cacheprovider

clean:
	rm -rf _build runs
