# The front door: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The hot path compiled by mypyc in place (an extension beside each source file, which Python's
# import prefers): appliance/build.py lists the modules and tells which build a process runs.
COMPILED_MODULES = $(shell cd $(CURDIR) && $(PYTHON) -m appliance.build modules)

.PHONY: demo test test-compiled compiled pure lint flows bench-matching bench-mypyc bench-pypy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot,scapy]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/matchwire demo

test: $(STAMP)
	MATCHWIRE_EXPECT_BUILD=$$($(BIN)/python -m appliance.build kind) $(BIN)/python -m pytest -q

# mypy --strict over every package ([tool.mypy] in pyproject.toml); mypy is pinned in the test extra.
lint: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --config-file tests/mypy.ini

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

compiled: $(STAMP)
	$(BIN)/python -m pip install --quiet mypy
	$(BIN)/mypyc $(COMPILED_MODULES) >build-mypyc.log 2>&1 || (tail -30 build-mypyc.log; exit 1)
	# mypyc's shared runtime library lands at the top of the tree: make it importable from anywhere
	echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/matchwire-compiled.pth"
	@echo "build: $$($(BIN)/python -m appliance.build kind)"

pure:
	rm -f appliance/*.so appliance/*/*.so feeds/*.so *__mypyc*.so build-mypyc.log
	[ ! -x $(BIN)/python ] || rm -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/matchwire-compiled.pth"
	@echo "build: cpython (the compiled extensions removed)"

# The suite against the compiled build, then back to the pure-Python reference. Left out: tests
# whose subject never runs through the compiled modules (deployment, which builds its own wheels;
# host checks; capture tools, dissector and scapy layers; kernel-bypass transports), the QuickFIX
# conformance run, hostile clients and the soak (they pass against the compiled gateway sessions
# too, about 110 s more: `make compiled`, then pytest on them), and the tests marked pure_only (long
# waits on a default timer or on process supervision): the pure run covers them, and the suite
# stays within its time on 2 cores.
COMPILED_SKIP := test_ansible test_doctor test_pcap_tools test_feed_pcap_tools test_wireshark \
                 test_scapy_layers test_afxdp test_onload_ready test_batchsend test_fix_quickfix \
                 test_hostile test_soak test_cli_errors
test-compiled: compiled
	MATCHWIRE_EXPECT_BUILD=mypyc $(BIN)/python -m pytest -q -m "not pure_only" $(COMPILED_SKIP:%=--ignore=tests/%.py); rc=$$?; \
	    $(MAKE) --no-print-directory pure; exit $$rc

bench-mypyc: compiled flows
	$(BIN)/matchwire bench matching flows/f1.bin --runs 5
	$(BIN)/matchwire bench matching flows/f100.bin --runs 5

# PyPy runs the same source (Debian's pypy3 is a 3.9 dialect; the matching core keeps to it).
bench-pypy: flows
	command -v pypy3 >/dev/null || (apt-get update -qq && apt-get install -y -qq pypy3)
	pypy3 -m tools.bench_matching matching flows/f1.bin --runs 5
	pypy3 -m tools.bench_matching matching flows/f100.bin --runs 5

clean:
	rm -rf $(VENV) build *.egg-info
