# Vigil: the two commands are `make run` and `make test`.
.PHONY: run test lint typecheck unit bench bootstrap bootstrap-dev clean

VENV := .venv
PY := $(VENV)/bin/python

run: bootstrap
	$(VENV)/bin/vigil run

test: bootstrap-dev lint typecheck
	$(PY) -m pytest -q

lint: bootstrap-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: bootstrap-dev
	$(VENV)/bin/mypy vigil edge_agent broker ingest_service storage_nodes alert_engine notifier api stack bench

bench: bootstrap-dev
	$(PY) -m bench.e2e
	$(PY) -m bench.storage
	$(PY) -m bench.ingest

bootstrap:
	@scripts/bootstrap run

bootstrap-dev:
	@scripts/bootstrap dev

clean:
	rm -rf .vigil
