# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml plugins/parsl/pyproject.toml plugins/snakemake/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e '.[mpi]'  # BAASH: mpi4py + MPICH's mpiexec in the venv
	$(BIN)/python -m pip install --quiet -e plugins/parsl
	$(BIN)/python -m pip install --quiet -e '.[snakemake]' -e plugins/snakemake
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/cli/demo.sh

# pytest exits 5 when it collects nothing; say so plainly instead of a bare make error.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not postgres" $(PYTEST_ARGS)

# mypy cannot follow setuptools' editable import hook for the core/ -> lineage_ledger mapping,
# so it checks a copy laid out as the installed package.
lint: $(STAMP)
	$(BIN)/ruff check core ledger_backends tests bench
	$(BIN)/ruff check plugins/parsl/src examples/parsl
	$(BIN)/ruff check plugins/snakemake/src
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r core build/typecheck/lineage_ledger && cp -r ledger_backends build/typecheck/lineage_ledger/backends
	cd build/typecheck && ../../$(BIN)/mypy -p lineage_ledger
	cp -r plugins/parsl/src/lineage_ledger_parsl build/typecheck/
	cd build/typecheck && ../../$(BIN)/mypy -p lineage_ledger_parsl
	MYPYPATH=build/typecheck $(BIN)/mypy plugins/snakemake/src/snakemake_logger_plugin_ledger

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash bench/run_all.sh

clean:
	rm -rf $(VENV) .lineage .pytest_cache .hypothesis build *.egg-info

# Hyperledger Fabric back-end: the `fabric` extra, and peer/orderer/... built once from the Go
# module proxy into ~/.cache/lineage-ledger (reused afterwards). Without it, fabric tests skip.
.PHONY: install-fabric
install-fabric: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fabric]'
	bash ledger_backends/fabric/tools/install-fabric.sh

# --- Airflow plugin (issue #5) -------------------------------------------------------
# Airflow 3.3 resolves together with the core (SQLAlchemy 2), Snakemake 9 and Parsl, so it
# shares .venv. The plugin is its own distribution (src layout) installed editable; the
# egg-info that setuptools leaves in src/ is removed, or Airflow would find the
# `airflow.plugins` entry point twice (once per metadata directory on sys.path).
AIRFLOW_STAMP := $(VENV)/.airflow-installed
AIRFLOW_SRC := plugins/airflow/src

$(AIRFLOW_STAMP): $(STAMP) plugins/airflow/pyproject.toml
	$(BIN)/python -m pip install --quiet -e 'plugins/airflow[openlineage]' 'apache-airflow>=3.3,<3.4'
	rm -rf $(AIRFLOW_SRC)/*.egg-info
	touch $@

.PHONY: install-airflow lint-airflow bench-airflow
install-airflow: $(AIRFLOW_STAMP)
install test test-fast demo bench: $(AIRFLOW_STAMP)

lint-airflow: $(AIRFLOW_STAMP)
	$(BIN)/ruff check $(AIRFLOW_SRC) examples/airflow
	$(BIN)/mypy $(AIRFLOW_SRC)/lineage_ledger_airflow
lint: lint-airflow

bench-airflow: $(AIRFLOW_STAMP)
	$(BIN)/python bench/bench_airflow.py
