# sora_pipeline — see README.md. Every target creates .venv on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PYTHONDONTWRITEBYTECODE :=

.PHONY: install demo test ui bench ui-check clean

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q $(VENV)
	uv pip install -q --compile-bytecode -p $(PY) -e '.[test,postgres]'
	@touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m sora_pipeline.demo

# the last line is `make test: N passed, M skipped, K failed` (tests/conftest.py); -ra (pyproject) lists each
# skip's reason. PostgreSQL tests skip without a server, and fail instead when CI is set.
test: $(STAMP)
	SORA_TEST_SUMMARY='make test' $(PY) -m pytest -q

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m sora_pipeline.definitions -h 127.0.0.1 -p 3000

bench: $(STAMP)
	$(PY) -m benchmarks

ui-check: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null))
	$(PY) scripts/ui_check.py

clean:
	rm -rf $(VENV) .dagster_home data/warehouse
