# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser feast-venv demo test test-risingwave lint format typecheck unit integration bench airflow clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	@touch $(STAMP)

install: $(STAMP)

# Headless Chromium and its driver, for the cockpit's browser test (Debian packages).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Feast 0.67 needs pandas<3, so the tests that compare our readers with Feast itself run it in
# a venv of its own (about 50 s to build once).
feast-venv:
	@test -x .venv-feast/bin/python || { $(PYTHON) -m venv .venv-feast && \
	  .venv-feast/bin/python -m pip install --quiet -r requirements-feast.txt; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck browser feast-venv
	$(BIN)/python -m pytest -q

test-risingwave: $(STAMP)
	@test -n "$$FSMIG_TEST_RISINGWAVE_URL" || { echo "set FSMIG_TEST_RISINGWAVE_URL=postgresql://root@HOST:4566/dev (a RisingWave the tests may write to)"; exit 2; }
	$(BIN)/python -m pytest -q -m risingwave tests/test_risingwave_live.py

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q -m "integration or airflow"

demo: $(STAMP)
	$(BIN)/python -m fsmig_dev.demo

# Airflow with the project's DAGs, the cockpit and connections to the embedded demo stores.
airflow: $(STAMP)
	$(BIN)/python -m fsmig_dev.demo.airflow_local $(if $(SCALE),--scale $(SCALE))

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .fsmig build *.egg-info .pytest_cache .ruff_cache .mypy_cache
