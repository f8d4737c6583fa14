# sora_pipeline — see README.md and docs/reference.md. Every target creates .venv on first use.
# `make` alone lists the targets (the `## text` after each one).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 3000
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help install demo test ui stop-ui ui-check reference bench clean

help: ## list the targets (this text)
	@echo "usage: make <target> [VAR=value …]   (docs/reference.md describes every command and variable)"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q $(VENV)
	uv pip install -q --compile-bytecode -p $(PY) -e '.[test,postgres,celery,s3]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test, postgres, celery and s3 extras

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml ## materialize the sample catalog on the embedded simulator (nothing billed)
	$(PY) -m sora_pipeline.demo

# the last line is `make test: N passed, M skipped, K failed` (tests/conftest.py); -ra (pyproject) lists each
# skip's reason. PostgreSQL tests skip without a server, and fail instead when CI is set.
test: $(STAMP) ## run the test suite (pytest; offline, simulators on loopback)
	SORA_TEST_SUMMARY='make test' $(PY) -m pytest -q

# scripts/run_ui.py: SIGINT reset to default, own process group, SIGTERM/SIGINT forwarded to the group
ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml ## the Dagster UI and daemon on http://127.0.0.1:3000 (PORT=…, HOST=…); Ctrl-C stops it
	exec $(PY) scripts/run_ui.py --host $(HOST) --port $(PORT)

stop-ui: ## stop a `make ui` running for this DAGSTER_HOME
	@$(PY) scripts/run_ui.py --stop

# screenshots to .ui-check/ (ignored); DOCS=1 refreshes the ones in docs/
ui-check: $(STAMP) ## verify the UI in headless Chromium (screenshots in .ui-check/; DOCS=1 writes docs/)
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))
	$(PY) scripts/ui_check.py --out $(if $(DOCS),docs,.ui-check)

reference: $(STAMP) ## regenerate the table columns and lineage in docs/reference.md from the code
	$(PY) scripts/reference_tables.py --write

bench: $(STAMP) ## run the benchmarks (results in benchmarks/results/)
	$(PY) -m benchmarks

clean: ## remove .venv, .dagster_home, data/warehouse and .ui-check
	rm -rf $(VENV) .dagster_home data/warehouse .ui-check
