# The two commands of the README: `make demo` and `make test`.
# Both install what they need (system packages, the virtualenv) first.
VENV    := .venv
BIN     := $(VENV)/bin
STAMPS  := .stamps
PYTHON  ?= python3

.PHONY: demo test deps unit integration lab-tests molecule lint clean-lab bench bench-loop bench-failover bench-fuse bench-mount fuzz

deps: $(STAMPS)/system $(STAMPS)/venv

$(STAMPS)/system: scripts/bootstrap-system.sh
	@mkdir -p $(STAMPS)
	bash scripts/bootstrap-system.sh
	@touch $@

$(STAMPS)/venv: pyproject.toml constraints.txt
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

demo: deps
	$(BIN)/mirrorkit lab up inventories/lab.yml
	$(BIN)/mirrorkit apply inventories/lab.yml
	$(BIN)/mirrorkit status inventories/lab.yml

# The whole suite: static checks, unit, loopback integration, lab, molecule.
test: deps lint unit integration lab-tests molecule

lint:
	$(BIN)/ruff check mirrorkit tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/ansible-lint --offline -q roles playbooks

# Two pytest-xdist workers (the reference machine has two cores): the
# integration tests mostly wait on agents, timeouts and ansible-playbook, the
# unit tests are a few long ones beside many short ones. Both are isolated
# (tmp_path; integration ports from a range of their own per worker, see
# free_port in tests/integration/test_loopback.py).
unit:
	$(BIN)/pytest -q -n 2 tests/unit

integration:
	$(BIN)/pytest -q -n 2 tests/integration

lab-tests:
	$(BIN)/pytest -q tests/lab

molecule:
	cd molecule/.. && PATH=$(abspath $(BIN)):$$PATH $(BIN)/molecule test --all

# Benchmarks side by side with rsync and lsyncd; writes bench/RESULTS.md.
# Not part of `make test`: figures are measurements, not pass/fail checks.
bench: deps
	$(BIN)/python bench/run.py

# Event-loop stall and /health latency of a primary under a 100k-file rescan and a
# 1 GiB checksum resync (issue 6 part 4); adds rows labelled $(LABEL) to bench/RESULTS.md.
# `make bench-loop LABEL=after`; ARGS=--quick for a smoke run (into bench/work/).
LABEL ?= run
bench-loop: deps
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/loopstall.py --label $(LABEL) $(ARGS)

# Failover, switchover and false failovers on the lab, as a client of records-app on
# the VIP sees them (issue 8 part 11); needs the lab up and applied (`make demo`).
# Adds section "Failover (issue 8)" to bench/RESULTS.md. ARGS e.g. --fault-seconds 120.
bench-failover: deps
	PYTHONPATH=$(CURDIR) PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/failover.py $(ARGS)

# FUSE bindings for the mount capture side by side with a plain directory (issue 9);
# adds section "FUSE binding (issue 9)" to bench/RESULTS.md. Needs root and /dev/fuse.
# pyfuse3 and llfuse build from source against libfuse 3 and 2: their build
# packages are installed here only (not by `make deps`: mfusepy, the binding
# chosen, needs only fuse3's library, and libfuse 2 installed makes mfusepy
# load it unless FUSE_LIBRARY_NAME=fuse3 is set).
bench-fuse: deps
	bash scripts/bootstrap-bench-fuse.sh
	$(BIN)/pip install -q -c constraints.txt -e '.[bench-fuse]'
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/fuse_binding.py $(ARGS)

# The mount capture against a plain local directory (issue 9 part 6): fdatasync
# p50/p99, sequential and random writes, small files, SQLite synchronous=FULL, on
# real agents (primary, backup, arbiter on loopback) and mirrorkit-mountd, in mode
# async and mode sync; ~4 min, needs root and /dev/fuse. Adds section "Mount
# capture (issue 9)" to bench/RESULTS.md. ARGS: --diagnose (async with the backup
# paused), --profile (py-spy; both: ~5.5 min), --rounds N, --quick --output FILE
# (a smoke run).
bench-mount: deps
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/mount.py --sync $(ARGS)

# The property-based tests (marked `fuzz`, also run by `make test` with a fixed
# seed and a bounded example count) with many more, random, examples.
# FUZZ_EXAMPLES=N sets the count per test (default 20000).
fuzz: deps
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -m fuzz --timeout 3600 tests/unit

clean-lab:
	$(BIN)/mirrorkit lab down inventories/lab.yml
