# Two commands do everything on a fresh clone: `make run` and `make test`.
# Each installs what it needs first (a virtualenv in .venv; for tests, Debian's chromium and caddy).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test install browser caddy clean

run: $(INSTALLED)  ## start Kindling on http://localhost:8080 (SQLite, demo page with the widget)
	$(VENV)/bin/kindling serve

test: $(INSTALLED) browser caddy  ## the whole test suite (PostgreSQL: set KINDLING_TEST_DATABASE_URL)
	$(PY) -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kindling needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,scoring]'
	touch $@

browser:  ## the browser tests drive Debian's chromium (never a downloaded browser)
	$(call debian_package,chromium,/usr/bin/chromium,The browser tests need)

caddy:  ## the deployment test runs Debian's caddy in front of Kindling (the package's own service is stopped)
	$(call debian_package,caddy,/usr/bin/caddy,The deployment test needs,&& (systemctl disable --now caddy >/dev/null 2>&1 || true))

# $(call debian_package,PACKAGE,PROGRAM,WHO need(s)[,&& COMMAND after installing]): apt-get install PACKAGE
# when PROGRAM is missing (as root), else say how to.
define debian_package
	@test -x $(2) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null $(4); \
	  else echo "$(3) Debian's $(1): sudo apt-get install $(1)" >&2; exit 1; fi; }
endef

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
