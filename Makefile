# dntk — two commands for a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dntk-installed
NBDIR  := .nb
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
NB_TIMEOUT ?= 900
# Idle OpenMP threads sleep instead of spinning (spinning costs minutes when cores are shared).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test test-py test-nb notebooks book run bench clean help

help:
	@echo "make book   - set up .venv, execute every chapter, build the HTML book into _build/html"
	@echo "make test   - set up .venv, run pytest over tests/ and nbval over the chapters"
	@echo "make run NB=01_ntk_and_jacobians [PARAMS=params/x.yaml] [P='-p name value'] - one chapter via papermill into runs/"

# Setup is idempotent: reinstalls only when pyproject.toml changed since the last install.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[book,test,bench]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dntk)" >/dev/null
	@touch $(STAMP)

test: test-py test-nb

test-py: setup
	$(BIN)/python -m pytest tests

# nbval executes the jupytext sources converted into an ignored folder (never beside the .py files).
notebooks: setup
	@rm -rf $(NBDIR) && mkdir -p $(NBDIR)
	@for f in $(NOTEBOOKS); do $(BIN)/jupytext --quiet --to ipynb -o $(NBDIR)/$$(basename $${f%.py}).ipynb $$f || exit 1; done

test-nb: notebooks
	cd $(NBDIR) && ../$(BIN)/python -m pytest -p no:cacheprovider --rootdir=. -c /dev/null --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NB_TIMEOUT) $(notdir $(NOTEBOOKS:.py=.ipynb))

book: setup
	@rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going
	@echo "Book written to _build/html/index.html"

# One chapter through jupytext -> papermill, e.g.
#   make run NB=01_ntk_and_jacobians PARAMS=params/digits-full.yaml P='-p device cuda'
run: setup
	@test -n "$(NB)" || { echo "usage: make run NB=<notebook name> [PARAMS=params/x.yaml] [P='-p name value']"; exit 2; }
	@test -f notebooks/$(NB).py || { echo "no notebook notebooks/$(NB).py; choose one of: $(notdir $(NOTEBOOKS:.py=))"; exit 2; }
	@mkdir -p runs
	$(BIN)/jupytext --quiet --to ipynb -o - notebooks/$(NB).py | \
	  $(BIN)/papermill - runs/$(NB)$(if $(PARAMS),-$(basename $(notdir $(PARAMS)))).ipynb -k python3 \
	  --cwd notebooks --execution-timeout $(NB_TIMEOUT) $(if $(PARAMS),-f $(PARAMS)) $(P)

bench: setup
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf _build $(NBDIR) runs
