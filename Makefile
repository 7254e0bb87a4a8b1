# Everything a fresh machine needs: `make demo` (the main job) and `make test`.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null \
	&& echo $$p && break; done)
VENV := .venv
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup demo test test-all lint bench clean browser

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "floranet needs Python 3.11 to 3.13, which TensorFlow 2.21 supports (python3.11/3.12/3.13 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,export,ray]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/floranet demo

# Debian's chromium for the browser tests; installed when we can (root + apt-get), else they skip.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "note: could not install chromium; browser tests will be skipped"; \
	  else echo "note: chromium not found and cannot be installed here; browser tests will be skipped"; fi; }

# Lint and types first (seconds), then the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

# The suite in parallel processes, one per core up to 4, each test file in one process (its module fixtures are
# built once): 1.7x faster on 2 cores. `make test PYTEST_JOBS=` runs it in this process alone.
PYTEST_JOBS ?= -n auto --maxprocesses=4 --dist loadfile

test: $(STAMP) browser lint
	$(VENV)/bin/python -m pytest $(PYTEST_JOBS)

test-all: $(STAMP) browser
	$(VENV)/bin/python -m pytest -m '' $(PYTEST_JOBS)

# The benchmarks' extra (scikit-image's sample photos), installed once per change of pyproject.toml.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
