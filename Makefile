# websockify: one word per job.  `make test` works on a fresh Debian machine:
# it installs the system packages, the virtualenv and rebind.so, then runs
# ruff, mypy and the whole test suite.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Extra Debian and pip packages of the launcher, the VNC demo and their tests.
-include mk/launcher.mk
# Upstream's Python API: upstream's and nova's tests (upstream-test, nova-test).
-include mk/library.mk
# The wheel, the sdist and the Debian package: make deb, make deb-check.
-include mk/packaging.mk
# TLS and the plugins: openssl and redis-server for their tests.
-include mk/tls.mk
# Operations: systemd and node for its tests.
-include mk/ops.mk

APT_PACKAGES := gcc libc6-dev iproute2 $(LAUNCHER_APT_PACKAGES) $(PACKAGING_APT_PACKAGES) \
	$(TLS_APT_PACKAGES) $(OPS_APT_PACKAGES)
PIP_TEST_PACKAGES := $(LAUNCHER_PIP_PACKAGES) $(LIBRARY_PIP_PACKAGES)

.PHONY: test venv system-packages lint typecheck pytest bench clean

test: system-packages venv rebind lint typecheck pytest upstream-test nova-test test-debian-python

venv: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(wildcard mk/*.mk)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' $(PIP_TEST_PACKAGES)
	touch $@

# Installs only what is missing, so a prepared machine costs no apt-get update.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check websockify tests scripts setup.py

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv rebind
	$(PY) -m pytest -q

bench: venv rebind
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NOVA_VENV) $(DEBIAN_VENV) .cache build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis websockify/rebind.so
