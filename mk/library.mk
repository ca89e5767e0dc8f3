# Upstream's Python API, tested by the programs that import it.  Included by the Makefile.
#
#   make upstream-test  upstream websockify 0.13.0's own library tests (from its source
#                       package on PyPI) against this package, in .venv: ~5 s.
#   make nova-test      OpenStack nova 34.0.0's console-proxy unit tests with this package
#                       installed as websockify in nova's own virtualenv (.nova-venv),
#                       in eventlet mode and in threading mode.
_library_default_goal := $(.DEFAULT_GOAL)

# eventlet: tests/test_library_proxy.py runs the library server under its monkey-patching.
LIBRARY_PIP_PACKAGES := eventlet

UPSTREAM_VERSION := 0.13.0
UPSTREAM_DIR := .cache/upstream-$(UPSTREAM_VERSION)
# Upstream tests that call upstream's private internals or assert its bug; the README
# ("Using websockify as a library") says why each one does not apply.
UPSTREAM_DESELECT := \
	tests/test_websocket.py::HyBiEncodeDecodeTestCase \
	tests/test_websocketproxy.py::ProxyRequestHandlerTestCase::test_token_plugin
UPSTREAM_TESTS := tests/test_websocket.py tests/test_websockifyserver.py \
	tests/test_websocketserver.py tests/test_websocketproxy.py

NOVA_VERSION := 34.0.0
NOVA_VENV := .nova-venv
NOVA_PY := $(NOVA_VENV)/bin/python
NOVA_STAMP := $(NOVA_VENV)/.installed
NOVA_TESTS := nova.tests.unit.console.test_websocketproxy
NOVA_TEST_PACKAGES := fixtures oslotest testtools stestr wsgi-intercept

.PHONY: upstream-test nova-test nova-venv

# The tests only, unpacked next to nothing else: upstream's own package must not be importable.
$(UPSTREAM_DIR)/.unpacked:
	rm -rf $(UPSTREAM_DIR) && mkdir -p $(UPSTREAM_DIR)/download
	$(PY) -m pip download --quiet --no-deps --no-binary :all: \
		-d $(UPSTREAM_DIR)/download websockify==$(UPSTREAM_VERSION)
	tar -xzf $(UPSTREAM_DIR)/download/websockify-$(UPSTREAM_VERSION).tar.gz \
		-C $(UPSTREAM_DIR) --strip-components=1 websockify-$(UPSTREAM_VERSION)/tests
	touch $@

# test_websocketproxy.py imports the plugin modules (websockify.token_plugins,
# websockify.auth_plugins); until they are in the tree it cannot be collected.
upstream-test: venv $(UPSTREAM_DIR)/.unpacked
	cd $(UPSTREAM_DIR) && files="$(UPSTREAM_TESTS)"; \
	if ! $(CURDIR)/$(PY) -c 'import websockify.token_plugins, websockify.auth_plugins' 2>/dev/null; then \
		echo "upstream-test: websockify.token_plugins/auth_plugins missing: skipping tests/test_websocketproxy.py"; \
		files="$${files% tests/test_websocketproxy.py}"; \
	fi; \
	$(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider --rootdir=. -c /dev/null $$files \
		$(foreach test,$(UPSTREAM_DESELECT),--deselect $(test))

nova-venv: $(NOVA_STAMP)

$(NOVA_STAMP): setup.py mk/library.mk
	test -x $(NOVA_PY) || $(PYTHON) -m venv $(NOVA_VENV)
	$(NOVA_PY) -m pip install --quiet --upgrade pip
	$(NOVA_PY) -m pip install --quiet nova==$(NOVA_VERSION) -e . $(NOVA_TEST_PACKAGES)
	touch $@

# Run from /tmp so nothing but the installed packages is importable; the first line
# proves the websockify nova imports is this tree.
nova-test: nova-venv
	cd /tmp && $(CURDIR)/$(NOVA_PY) -c 'import websockify.websockifyserver as m, sys; \
		sys.exit(0 if m.__file__.startswith("$(CURDIR)/") else "nova imports " + m.__file__)'
	cd /tmp && $(CURDIR)/$(NOVA_PY) -m testtools.run $(NOVA_TESTS)
	cd /tmp && OS_NOVA_DISABLE_EVENTLET_PATCHING=1 $(CURDIR)/$(NOVA_PY) -m testtools.run $(NOVA_TESTS)

.DEFAULT_GOAL := $(_library_default_goal)
