# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Each creates the virtual environment it needs; nothing is installed by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench soak protos lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,embedded]'
	touch $(STAMP)

## make run: the whole cluster on this machine, with embedded defaults.
run: $(STAMP)
	$(VENV)/bin/quarry up

## make test: the test suite, against real processes, ClickHouse server and chdb.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## make protos: regenerate protos/v1/*_pb2*.py from protos/v1/*.proto.
protos: $(STAMP)
	$(PY) -m quarry.cli.protos_codegen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .quarry

## make bench: the two standard workloads (fleet, events) side by side, about 10 minutes
## (not part of make test). BENCH_ARGS="--workload events --hosts 5000" and friends: see
## `python -m bench --help`.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

## make soak: 10 minutes of a simulated fleet with random process kills (not part of make test).
## SOAK_ARGS="--minutes 2 --hosts 30" and friends: see `python -m bench.soak --help`.
soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)
