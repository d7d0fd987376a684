# cbm_luigi — the two sacred commands: `make demo` and `make test` (both set themselves up).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CBM_HOME ?= $(CURDIR)
DEMO_ENV := CBM_HOME=$(CURDIR)/var/demo CBM_ENV_FILE=

.PHONY: setup system-deps demo test test-mssql bench lint clean

# unixODBC + the SQLite ODBC driver: the real ODBC driver manager and driver the source tests go through
system-deps:
	@if ! odbcinst -q -d 2>/dev/null | grep -q '^\[SQLite3\]'; then \
	  if [ "$$(id -u)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unixodbc unixodbc-dev libsqliteodbc >/dev/null; \
	  else echo "need unixodbc + libsqliteodbc: sudo apt-get install unixodbc unixodbc-dev libsqliteodbc"; exit 1; fi; \
	fi

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,fast]'
	touch $@

# bytecode for the package, as `pip install` of a wheel writes it: an editable install leaves it to the first
# import, which writes none under PYTHONDONTWRITEBYTECODE (then every luigi process compiled ~30 modules: 30 ms).
# A checkout the user cannot write (deployed read-only, its venv elsewhere) goes without (found in review)
setup: system-deps $(VENV)/.installed
	@if [ -w cbm_luigi ]; then $(PY) -m compileall -q cbm_luigi; else echo "cbm_luigi/ is not writable: no bytecode written (each process compiles the modules it imports)"; fi

# The whole pipeline on the embedded default: full load, a working day of changes, incremental, final full.
demo: setup
	rm -rf var/demo && mkdir -p var/demo
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl demo-source
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl init-db --tables-csv ../../config/tables.csv
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl sync-columns --all
	cd var/demo && $(DEMO_ENV) LUIGI_CONFIG_PATH=../../luigi.cfg ../../$(VENV)/bin/luigi --module cbm_luigi LoadAll --mode full --local-scheduler --no-lock 2>&1 | sed -n '/Execution Summary/,$$p'
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl demo-change
	cd var/demo && $(DEMO_ENV) LUIGI_CONFIG_PATH=../../luigi.cfg ../../$(VENV)/bin/luigi --module cbm_luigi LoadAll --mode incremental --local-scheduler --no-lock 2>&1 | sed -n '/Execution Summary/,$$p'
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl summary
	cd var/demo && $(DEMO_ENV) LUIGI_CONFIG_PATH=../../luigi.cfg ../../$(VENV)/bin/luigi --module cbm_luigi LoadAll --mode full --batch-tag final --local-scheduler --no-lock 2>&1 | sed -n '/Execution Summary/,$$p'
	cd var/demo && $(DEMO_ENV) ../../$(VENV)/bin/cbm-etl summary
	@echo "warehouse file: $(CURDIR)/var/demo/var/warehouse.duckdb"

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

# the live SQL Server suite: CBM_TEST_MSSQL='DRIVER={ODBC Driver 18 for SQL Server};SERVER=...;...' make test-mssql
test-mssql: setup
	$(PY) -m pytest -q -p no:cacheprovider -rs tests/test_mssql_live.py

bench: setup
	$(PY) -m bench.run $(if $(QUICK),--quick,)

lint: setup
	for f in sql/mssql/*.sql; do $(PY) -m sqlfluff parse --dialect tsql "$$f" >/dev/null || exit 1; done

# the demo's home and the build only: var/ may hold a real warehouse and cache (CBM_HOME defaults to here)
clean:
	rm -rf var/demo .venv build *.egg-info
