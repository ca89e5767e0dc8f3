# Packaging: `make deb` builds dist/websockify_<version>_<arch>.deb with Debian's
# own tools (dpkg-buildpackage, debhelper, pybuild) from a copy of the source in
# build/deb; `make deb-check` runs tests/test_deb.py alone (it builds the package,
# inspects it, and installs, runs, removes and purges it in a throwaway root);
# `make man` writes websockify.1.
# Included by the Makefile; it leaves the including Makefile's default goal alone.
_packaging_default_goal := $(.DEFAULT_GOAL)

# The one version string is websockify/__init__.py's, as setup.py reads it.
# (computed once, and only by the targets that use it)
VERSION = $(eval VERSION := $(shell $(PYTHON) setup.py --version 2>/dev/null))$(VERSION)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_BUILD_DIR := build/deb
DIST_DIR := dist
DEB_SOURCE_DIR = $(DEB_BUILD_DIR)/websockify-$(VERSION)
DEB_MAINTAINER := websockify developers <websockify@example.org>
# What the source package is made of (the rest of the tree is development-only).
DEB_SOURCE_FILES := setup.py pyproject.toml MANIFEST.in README.md websockify rebind \
	scripts/manpage.py debian

# Building the .deb and checking it (lintian); Debian 12's gevent, gevent-websocket
# and numpy, which the package depends on, also run the suite (test-debian-python).
PACKAGING_APT_PACKAGES := dpkg-dev debhelper dh-python fakeroot lintian python3-all \
	python3-setuptools python3-venv python3-gevent python3-gevent-websocket python3-numpy

.PHONY: dist deb deb-build-packages deb-check man test-debian-python

# Before the recipe, which setup.py --version (VERSION) needs on a fresh machine.
deb-build-packages:
	@$(MAKE) --no-print-directory system-packages \
		APT_PACKAGES="gcc libc6-dev $(PACKAGING_APT_PACKAGES)"

deb: deb-build-packages
	$(if $(VERSION),,$(error setup.py --version gave no version))
	rm -rf $(DEB_BUILD_DIR)
	mkdir -p $(DEB_SOURCE_DIR) $(DIST_DIR)
	tar -c --exclude='*.so' --exclude=__pycache__ --exclude='*.egg-info' \
		$(DEB_SOURCE_FILES) | tar -x -C $(DEB_SOURCE_DIR)
	printf 'websockify (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
		'$(VERSION)' '$(VERSION)' '$(DEB_MAINTAINER)' \
		"$$(git log -1 --format=%cD 2>/dev/null || date -R)" \
		> $(DEB_SOURCE_DIR)/debian/changelog
	cd $(DEB_SOURCE_DIR) && dpkg-buildpackage --build=binary --no-sign
	cp $(DEB_BUILD_DIR)/websockify_$(VERSION)_$(DEB_ARCH).deb $(DIST_DIR)/
	@echo "built $(DIST_DIR)/websockify_$(VERSION)_$(DEB_ARCH).deb"

# The wheel and the sdist, as a release builds them.
dist: venv
	$(PY) -m build --outdir $(DIST_DIR)

# The package's own tests alone (make test runs them too): build, inspect, lintian,
# and install/run/remove/purge in a throwaway root.
deb-check: system-packages venv
	$(PY) -m pytest -q tests/test_deb.py

man:
	$(PYTHON) scripts/manpage.py > websockify.1

# The package runs on Debian 12's own Python 3.11, gevent 22.10 and numpy 1.24, not on
# PyPI's newest: the tests of what they drive (relay, codecs and masking, server,
# launcher) run on them too, in a venv over the system's packages, from the tree.
# `make test-debian-python DEBIAN_PYTHON_TESTS=tests` runs the whole suite there.
DEBIAN_VENV := .venv-debian
DEBIAN_PYTHON_TESTS := tests/test_masking.py tests/test_hybi.py tests/test_fuzz_hybi.py \
	tests/test_bridge_relay.py tests/test_bridge_protocol.py tests/test_bridge_http.py \
	tests/test_hixie_server.py tests/test_launcher.py
# Only the test tools: gevent, gevent-websocket and numpy must stay Debian's.
DEBIAN_VENV_PIP_PACKAGES := pytest pytest-timeout hypothesis 'websockets>=12'

$(DEBIAN_VENV)/.installed: mk/packaging.mk
	test -x $(DEBIAN_VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(DEBIAN_VENV)
	$(DEBIAN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		$(DEBIAN_VENV_PIP_PACKAGES)
	touch $@

test-debian-python: system-packages $(DEBIAN_VENV)/.installed rebind
	$(DEBIAN_VENV)/bin/python -c 'import gevent, numpy, geventwebsocket as w; \
		assert all(m.__file__.startswith("/usr/lib/python3/dist-packages/") \
		for m in (gevent, numpy, w)), "not Debian'"'"'s packages"; \
		print("Debian 12: gevent", gevent.__version__, "numpy", numpy.__version__)'
	$(DEBIAN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(DEBIAN_PYTHON_TESTS)

.DEFAULT_GOAL := $(_packaging_default_goal)
