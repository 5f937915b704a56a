# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml plugins/snakemake/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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
	$(BIN)/ruff check core ledger_backends tests bench plugins/snakemake/src
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r core build/typecheck/lineage_ledger && cp -r ledger_backends build/typecheck/lineage_ledger/backends
	cd build/typecheck && ../../$(BIN)/mypy -p lineage_ledger
	MYPYPATH=build/typecheck $(BIN)/mypy plugins/snakemake/src/snakemake_logger_plugin_ledger

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash bench/run_all.sh

clean:
	rm -rf $(VENV) .lineage .pytest_cache .hypothesis build *.egg-info
