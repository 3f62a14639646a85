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

.PHONY: setup data lint test test-py test-nb notebooks book check-book run bench clean help

help:
	@echo "make book   - set up .venv, execute every chapter, build the HTML book into _build/html"
	@echo "make test   - set up .venv, run pytest over tests/ and nbval over the chapters"
	@echo "make check-book - open every page of _build/html in headless Chromium and fail on rendering problems"
	@echo "make run NB=01_ntk_and_jacobians [PARAMS=params/x.yaml] [P='-p name value'] - one chapter via papermill into runs/"

# Setup is idempotent: reinstalls only when pyproject.toml changed since the last install.
setup: $(STAMP) data

# Fashion-MNIST (chapter 13): the four IDX files of the Debian package dataset-fashion-mnist, or a copy in
# $$DNTK_DATA/fashion-mnist (or torchvision's $$DNTK_DATA/FashionMNIST/raw). When they are missing and apt-get
# can run (root or passwordless sudo), install the package; otherwise stop and name both routes.
# Test the missing branch with e.g.  FASHION_MNIST_DIR=/nonexistent APT_GET='echo apt-get' make data
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
APT_GET ?= apt-get
FM_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
FM_FOUND = for d in "$(FASHION_MNIST_DIR)" $${DNTK_DATA:+"$$DNTK_DATA/fashion-mnist" "$$DNTK_DATA/FashionMNIST/raw"}; do \
  ok=1; for f in $(FM_FILES); do [ -f "$$d/$$f.gz" ] || [ -f "$$d/$$f" ] || ok=0; done; [ $$ok = 1 ] && exit 0; done; exit 1
data:
	@if ( $(FM_FOUND) ); then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	if [ "$$sudo" != none ] && command -v apt-get >/dev/null; then \
	  echo "Fashion-MNIST not found in $(FASHION_MNIST_DIR): installing the Debian package dataset-fashion-mnist"; \
	  $$sudo $(APT_GET) install -y dataset-fashion-mnist || { $$sudo $(APT_GET) update && $$sudo $(APT_GET) install -y dataset-fashion-mnist; } || true; \
	  if ( $(FM_FOUND) ); then exit 0; fi; \
	fi; \
	echo "Fashion-MNIST (needed by chapter 13) is missing: no $(FM_FILES:=[.gz]) in $(FASHION_MNIST_DIR)$${DNTK_DATA:+ or $$DNTK_DATA/fashion-mnist}." >&2; \
	echo "Get it either way, then rerun make:" >&2; \
	echo "  1. the Debian package:  sudo apt-get install dataset-fashion-mnist   (files in /usr/share/datasets/fashion-mnist)" >&2; \
	echo "  2. torchvision on a networked machine:  export DNTK_DATA=<dir>; $(BIN)/python -c \"import os, torchvision; torchvision.datasets.FashionMNIST(os.environ['DNTK_DATA'], download=True)\"   (files in <dir>/FashionMNIST/raw)" >&2; \
	exit 1
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[book,test,bench]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dntk)" >/dev/null
	@touch $(STAMP)

test: test-py test-nb

test-py: setup lint
	$(BIN)/python -m pytest tests

# ruff (lint and import order, configured in pyproject.toml) over the package, tests, chapters and scripts.
lint: setup
	$(BIN)/ruff check dntk tests benchmarks notebooks .ci book/_ext

# nbval executes the jupytext sources converted into an ignored folder (never beside the .py files).
notebooks: setup
	@rm -rf $(NBDIR) && mkdir -p $(NBDIR)
	@for f in $(NOTEBOOKS); do $(BIN)/jupytext --quiet --to ipynb -o $(NBDIR)/$$(basename $${f%.py}).ipynb $$f || exit 1; done

test-nb: notebooks
	cd $(NBDIR) && ../$(BIN)/python -m pytest -p no:cacheprovider --rootdir=. -c /dev/null --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NB_TIMEOUT) $(notdir $(NOTEBOOKS:.py=.ipynb))

# MathJax 3 served from the book's own static files, so every formula renders with no network.
MATHJAX_VERSION ?= 3.2.2
MATHJAX := book/_static/mathjax/tex-chtml.js
$(MATHJAX):
	@command -v npm >/dev/null || { echo "npm is needed once to fetch MathJax (Debian: apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null) \
	  && tar -xzf $$tmp/mathjax-$(MATHJAX_VERSION).tgz -C $$tmp \
	  && rm -rf book/_static/mathjax && mkdir -p book/_static && mv $$tmp/package/es5 book/_static/mathjax \
	  && rm -rf $$tmp && echo "MathJax $(MATHJAX_VERSION) installed in book/_static/mathjax"

book: setup $(MATHJAX)
	@rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going
	@echo "Book written to _build/html/index.html"

# Every page of _build/html in headless Chromium, served on 127.0.0.1 with no network.
check-book: setup
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }
	$(BIN)/python .ci/check_book.py _build/html

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
