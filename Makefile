# jobkit: `make demo` and `make test` work on a fresh machine with nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-browser lint typecheck pytest nbval notebooks bench bench-quick lock clean

BROWSER_STAMP := $(VENV)/.browser-installed

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobkit.demo --plot demo_clips.png

test: $(STAMP) lint typecheck pytest nbval

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,browser]'
	touch $(BROWSER_STAMP)

# The notebooks in JupyterLab + headless Chromium (Debian's `chromium`; JOBKIT_CHROMIUM to
# use another). Skips with the reason when no browser is found, fails under CI=true.
test-browser: $(BROWSER_STAMP)
	$(BIN)/pytest -q -p no:cacheprovider browser_tests

# ruff, then the layers of ARCHITECTURE.md (import-linter, contract in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check jobkit tests browser_tests $(wildcard benchmarks)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy jobkit

pytest: $(STAMP)
	$(BIN)/pytest -q tests

nbval: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(BIN)/pytest -q --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks; \
	else echo "no notebooks yet"; fi

notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

# The benchmark's peers (pgqueuer, huey) and profiler: the `bench` extra, only for these.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick

# Refresh the lock of tested versions (constraints.txt) from a clean resolve.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -e '.[dev,browser,bench]'
	.lockvenv/bin/pip freeze --exclude-editable | grep -v '^jobkit' > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache demo_clips.png browser-screenshots
