# Two entry points, both from a fresh clone with nothing installed by hand:
#   make demo   set up .venv, then run `openwit demo` (the mini-web -> build on 127.0.0.1)
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_SILENT := true

WORDNET := /usr/share/wordnet/data.noun
TORCH_VERSION ?= 2.13.0

.PHONY: setup wordnet demo test clean

setup: $(VENV)/.installed wordnet

# `openwit queries` reads WordNet's database files; Debian's wordnet-base puts them in
# /usr/share/wordnet. Without root or apt-get the query table is built without WordNet.
wordnet:
	@if [ ! -e $(WORDNET) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's wordnet-base (WordNet 3.0) for openwit queries"; \
	    apt-get install -y --no-install-recommends wordnet-base >/dev/null 2>&1 || \
	    (apt-get update >/dev/null 2>&1 && \
	     apt-get install -y --no-install-recommends wordnet-base >/dev/null 2>&1) || \
	    echo "note: wordnet-base did not install; openwit queries will run without WordNet"; \
	  else \
	    echo "note: no WordNet in /usr/share/wordnet; 'sudo apt-get install wordnet-base' adds it"; \
	  fi; \
	fi

# torch first, pinned: its CPU build is what the trainer is tested with, and pip would
# otherwise resolve pyproject.toml's torch range to a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/openwit demo $(ARGS)

# Two processes (the machine's two cores), each taking whole test files, so that a file's
# module-scoped fixtures (a built corpus, a served mini-web) are built once.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info openwit-demo
