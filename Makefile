# Everything a fresh machine needs comes from here: `make demo` and `make test` each set up what
# they use (virtual environment, Python packages, Azurite from npm) and stop what they start.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
AZURITE := node_modules/.bin/azurite-blob

.PHONY: setup demo report-screenshot test test-fast check-migrations dist wheel-check audit-deps bench lint clean

setup: $(STAMP) $(AZURITE)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: setup
	$(PY) -m sandbox.demo

# docs/report.png: `report --format html` of the demo's estate after its first pass, in headless
# Chromium (Debian's `chromium` package).
report-screenshot: setup
	$(PY) -m sandbox.screenshot docs/report.png

test: setup
	$(PY) -m pytest

# Fast tests only: no Azurite, ARM stand-in or PostgreSQL.
test-fast: setup
	$(PY) -m pytest tests/test_urls.py tests/test_decide.py tests/test_config.py

# Models and migrations must not drift (what `alembic check` checks), on a scratch SQLite file.
check-migrations: setup
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  $(VENV)/bin/alembic -x url=sqlite:///$$tmp/check.db upgrade head && \
	  $(VENV)/bin/alembic -x url=sqlite:///$$tmp/check.db check

# A release: dist/vhd_gc-<version>.tar.gz (the sdist) and dist/vhd_gc-<version>-py3-none-any.whl,
# built from the sdist. The version is gc_daemon.__version__.
dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist .

# The wheel as an operator installs it: build the sdist and the wheel, install the wheel into a fresh
# virtual environment outside the checkout, and from a temporary directory run db upgrade, a complete
# scan and the daemon against Azurite and the ARM stand-in (sandbox/wheel_check.py). Needs PyPI.
wheel-check: setup
	$(PY) -m sandbox.wheel_check

# Known vulnerabilities in the installed dependency set (PyPI's advisory data; OSV is not reachable
# from these machines). Versions PyPI does not know are listed as skipped, not failed.
audit-deps: setup
	$(PY) -m pip install --quiet pip-audit
	$(VENV)/bin/pip-audit --vulnerability-service pypi --progress-spinner off --skip-editable

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis *.egg-info build dist
