# make demo: the main job on the embedded default (no services needed).
# make test: the whole suite against real Redis, RabbitMQ, PostgreSQL and SQLite.
# make compat: Dramatiq's own test suite against our middleware stack (CI runs both).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# chromium: the dashboard's browser test drives Debian's build (Playwright never downloads one).
# prometheus: the observability test runs a real Prometheus server, and promtool checks the alert rules.
DEBIAN_PACKAGES := espeak-ng sox chromium prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test compat docs lint setup system-packages services clean

setup: $(STAMP) system-packages

# Re-installs whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# Starts any of PostgreSQL, Redis or RabbitMQ that is not answering on loopback.
services: $(STAMP)
	$(PY) -m tests.services

demo: setup
	$(PY) -m ops.demo

test: setup services docs
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2

# The guide (docs/pages/), built strictly: a broken link or anchor, or a page missing from nav, fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -f docs/mkdocs.yml

# Dramatiq's own test suite against our middleware stack (tests/dramatiq_compat/, about 6 min):
# its own step in CI (.ci/run), beside the suite's ten minutes.
compat: setup services
	$(PY) -m tests.dramatiq_compat

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache
