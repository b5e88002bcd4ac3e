# Two commands do everything on a fresh clone: `make run` and `make test`.
# Each installs what it needs first (a virtualenv in .venv; for tests, Debian's chromium).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test install browser clean

run: $(INSTALLED)  ## start Kindling on http://localhost:8080 (SQLite, demo page with the widget)
	$(VENV)/bin/kindling serve

test: $(INSTALLED) browser  ## the whole test suite (PostgreSQL: set KINDLING_TEST_DATABASE_URL)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kindling needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

browser:  ## the browser tests drive Debian's chromium (never a downloaded browser)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "The browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
