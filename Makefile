# The front door: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The matching core, compiled by mypyc for `make bench-mypyc` (same typed source).
MYPYC_MODULES := appliance/model.py appliance/reasons.py appliance/catalogue.py \
                 appliance/matching/book.py appliance/matching/engine.py appliance/matching/statehash.py

.PHONY: demo test lint flows bench-matching bench-mypyc bench-pypy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/matchwire demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet mypy
	$(BIN)/python -m mypy

# The standard flows (`matchwire flow generate`) with the results a correct engine must reproduce.
flows/f1.bin: | $(STAMP)
	mkdir -p flows && $(BIN)/matchwire flow generate flows/f1 --events 1000000 --seed 42 --target 5000 >/dev/null
flows/f100.bin: | $(STAMP)
	mkdir -p flows && $(BIN)/matchwire flow generate flows/f100 --events 1000000 --instruments 100 --target 1000 --seed 42 >/dev/null
flows: flows/f1.bin flows/f100.bin

bench-matching: $(STAMP) flows
	$(BIN)/matchwire bench matching flows/f1.bin --runs 5
	$(BIN)/matchwire bench matching flows/f100.bin --runs 5
	$(BIN)/matchwire bench memory

build/mypyc/.built: $(STAMP) $(MYPYC_MODULES)
	$(BIN)/python -m pip install --quiet mypy
	rm -rf build/mypyc && mkdir -p build/mypyc
	cp -r appliance feeds retransmit tools build/mypyc/
	cd build/mypyc && ../../$(BIN)/mypyc $(MYPYC_MODULES) >/dev/null
	touch $@

bench-mypyc: build/mypyc/.built flows
	cd build/mypyc && ../../$(BIN)/python -m tools bench matching ../../flows/f1.bin --runs 5
	cd build/mypyc && ../../$(BIN)/python -m tools bench matching ../../flows/f100.bin --runs 5

# PyPy runs the same source (Debian's pypy3 is a 3.9 dialect; the matching core keeps to it).
bench-pypy: flows
	command -v pypy3 >/dev/null || (apt-get update -qq && apt-get install -y -qq pypy3)
	pypy3 -m tools.bench_matching matching flows/f1.bin --runs 5
	pypy3 -m tools.bench_matching matching flows/f100.bin --runs 5

clean:
	rm -rf $(VENV) build *.egg-info
