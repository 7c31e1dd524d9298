# flowforge: `make test` and `make demo` set everything up in .venv and run.
# torch is pinned through constraints.txt so that pip never pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-compile lint format demo bench bench-quick clean ablations

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks examples conftest.py
	$(BIN)/ruff format --check src tests scripts benchmarks examples conftest.py

format: $(STAMP)
	$(BIN)/ruff format src tests scripts benchmarks examples conftest.py
	$(BIN)/ruff check --fix src tests scripts benchmarks examples conftest.py

test: $(STAMP) lint
	$(BIN)/python -m pytest

# the generic test on the compiled path for every compiled family (about 5-10 minutes; `make
# test` runs it for RealNVP)
test-compile: $(STAMP)
	FLOWFORGE_COMPILE_TESTS=all $(BIN)/python -m pytest tests/test_compile_generic.py

demo: $(STAMP)
	$(BIN)/flowforge demo --out runs/demo --overwrite

# Benchmarks against zuko, nflows, normflows and FrEIA (the `bench` extra). torch stays pinned
# through constraints.txt; the check below fails loudly if pip ever replaced it.
$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; print('torch', v); \
	sys.exit(0 if v.startswith('2.13.0') else 'pip replaced torch: ' + v)"
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/run.py

bench-quick: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/run.py --quick

# one switch at a time on digits (about 40 min on one busy CPU core; --quick: 15 s)
ablations: $(STAMP)
	$(BIN)/python scripts/ablations.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# a VAE on the digits with each flow posterior; test ELBO and IW bound (k = 1000)
# into docs/vae_table.json and docs/vi.md (about 10-15 min on 2 CPU cores; --quick: 20 s)
.PHONY: vae-table
vae-table: $(STAMP)
	$(BIN)/python examples/vae/table.py

# full-page screenshots of each kind of report into docs/img/reports/ (docs/reports.md): a
# headless Chromium from the npm registry (node and npm needed), then the four runs
.PHONY: screenshots
scripts/screenshot/node_modules: scripts/screenshot/package.json
	npm install --prefix scripts/screenshot --no-audit --no-fund
	touch $@
screenshots: $(STAMP) scripts/screenshot/node_modules
	$(BIN)/python scripts/report_gallery.py --screenshot
