# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGINS := plugins/snakemake plugins/parsl plugins/airflow plugins/nextflow
PLUGIN_SRC := $(addsuffix /src,$(PLUGINS))

.PHONY: install lock install-airflow install-fabric install-nextflow demo test test-fast lint bench bench-airflow clean

# One resolve for the core, every back-end's extra, the three engines and their plugins, so
# that every constraint is seen at once (Airflow 3.3, Snakemake 9 and Parsl share this venv).
# uv installs it (on a clean machine in a fraction of pip's time: it fetches in parallel),
# held to constraints.txt, pip's resolution on Python 3.11, which the tests pass with; where
# uv cannot be installed or that set cannot be (another Python whose wheels differ), pip
# resolves the install itself, as before the pins. `make lock` rewrites constraints.txt.
# Byte-compiled at install as pip does (uv does not by default): where PYTHONDONTWRITEBYTECODE
# is set, as on this machine, every process would compile Airflow or Click from source again.
# Plugins are their own src-layout distributions, installed editable: Snakemake finds its
# logger plugin as a top-level module. setuptools leaves an egg-info in src/ beside the
# package; Airflow would then see the plugin's entry point twice, so it is removed.
# setuptools serves the core/ -> lineage_ledger mapping with an import hook and says so in
# an "Editable installation" note on every install; that note (and only it) is filtered.
EDITABLES := -e '.[all,dev]' -e plugins/snakemake -e plugins/parsl -e 'plugins/airflow[openlineage]' -e plugins/nextflow
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS)) constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if $(BIN)/python -m pip install --quiet uv && \
		PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/python -m uv pip install --quiet \
			--compile-bytecode --python $(BIN)/python -c constraints.txt $(EDITABLES); then :; \
	else \
		echo "uv could not install the pinned environment; pip resolves and installs it"; \
		PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/python -m pip install --quiet \
			$(EDITABLES); \
	fi
	rm -rf $(addsuffix /*.egg-info,$(PLUGIN_SRC))
	touch $(STAMP)

# pip resolves the install afresh in a new environment; its versions become constraints.txt.
lock:
	rm -rf build/lock && $(PYTHON) -m venv build/lock
	build/lock/bin/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation:UserWarning' build/lock/bin/python -m pip install --quiet $(EDITABLES)
	{ sed -n '/^#/p' constraints.txt; build/lock/bin/python -m pip freeze --exclude-editable | sort; } > build/lock/constraints.txt
	mv build/lock/constraints.txt constraints.txt && rm -rf build/lock $(addsuffix /*.egg-info,$(PLUGIN_SRC))

install: $(STAMP)

# Airflow 3.3, the OpenLineage provider and the plugin are part of the one resolve above;
# this target installs them the same way and checks the entry point Airflow loads it by.
install-airflow: $(STAMP)
	$(BIN)/python -c "from importlib.metadata import entry_points as e, version as v; \
		assert [p for p in e(group='airflow.plugins') if p.name == 'lineage_ledger'], 'no plugin'; \
		print('apache-airflow', v('apache-airflow'), 'with lineage-ledger-airflow', v('lineage-ledger-airflow'))"

# Hyperledger Fabric's peer, orderer and tools, built once from the Go module proxy into
# ~/.cache/lineage-ledger and reused afterwards. Without them the fabric tests skip.
install-fabric: $(STAMP)
	bash ledger_backends/fabric/tools/install-fabric.sh

# Nextflow 25.04.4 assembled from Maven Central (mvn, Java 17..24) into ~/.cache/lineage-ledger
# and reused afterwards. Without it the Nextflow runs in the tests skip.
install-nextflow:
	bash plugins/nextflow/tools/install-nextflow.sh

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/cli/demo.sh

# One test process more than there are processors, at most four (pytest-xdist; tests/conftest.py
# says which tests share a process), or one (-n 0) on one processor: much of a test's time is
# spent waiting on an engine (a scheduler's loop, a JVM, a server), so two processes left a
# quarter of two processors idle; three ran a sample of five modules (Airflow, Nextflow,
# Snakemake and core tests) in 234 s against 275 s. TEST_WORKERS=N sets it.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ $$n -lt 2 ]; then echo 0; elif [ $$n -gt 3 ]; then echo 4; else echo $$((n + 1)); fi)

# pytest exits 5 when it collects nothing; say so plainly instead of a bare make error.
# pytest-randomly (dev extra) runs the tests in a random order and prints the seed first:
# PYTEST_ARGS="--randomly-seed=N" (or =last) repeats an order; PYTEST_ARGS="-p no:randomly" turns it off.
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not postgres and not mpi and not fabric" $(PYTEST_ARGS)

# mypy cannot follow setuptools' editable import hook for the core/ -> lineage_ledger mapping,
# so it checks a copy laid out as the installed package, with the plugins beside it.
lint: $(STAMP)
	$(BIN)/ruff check core ledger_backends tests bench examples $(PLUGIN_SRC)
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r core build/typecheck/lineage_ledger && cp -r ledger_backends build/typecheck/lineage_ledger/backends
	cd build/typecheck && ../../$(BIN)/mypy -p lineage_ledger
	MYPYPATH=build/typecheck $(BIN)/mypy plugins/snakemake/src/snakemake_logger_plugin_ledger
	cp -r plugins/parsl/src/lineage_ledger_parsl build/typecheck/
	cd build/typecheck && ../../$(BIN)/mypy -p lineage_ledger_parsl
	$(BIN)/mypy plugins/airflow/src/lineage_ledger_airflow
	MYPYPATH=build/typecheck $(BIN)/mypy plugins/nextflow/src/lineage_ledger_nextflow

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash bench/run_all.sh

# The Airflow listener's overhead alone (7 rounds; BENCH_ARGS="--repeats 15" or "--quick").
bench-airflow: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/bench_airflow.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .lineage .pytest_cache .hypothesis build *.egg-info
