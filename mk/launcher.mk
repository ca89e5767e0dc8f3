# The launcher's part of the build: rebind.so, `make demo`, and the packages the
# launcher's tests need (LAUNCHER_APT_PACKAGES, LAUNCHER_PIP_PACKAGES).
# Included by the Makefile; it leaves the including Makefile's default goal alone.
_launcher_default_goal := $(.DEFAULT_GOAL)

# tigervnc-standalone-server: Xtigervnc and vncserver; xauth: vncserver's cookie;
# x11-xserver-utils: xsetroot; novnc: the browser client (Debian's, with vnc.html);
# chromium + chromium-driver: the headless browser of tests/test_vnc_browser.py;
# xterm: the terminal in the wrapped desktop that starts a server of its own.
# (The static test server of tests/test_launcher.py links libc.a from libc6-dev.)
LAUNCHER_APT_PACKAGES := tigervnc-standalone-server tigervnc-tools xauth \
	x11-xserver-utils xterm novnc chromium chromium-driver python3-venv
LAUNCHER_PIP_PACKAGES := selenium
# What `make demo` needs on a fresh machine: a compiler, a venv, a VNC server with
# a terminal in its session, and noVNC.
DEMO_APT_PACKAGES := gcc libc6-dev python3-venv tigervnc-standalone-server \
	tigervnc-tools xauth xterm novnc
DEMO_PORT ?= 6080
DEMO_LISTEN ?= 127.0.0.1
NOVNC_DIR ?= /usr/share/novnc

# `make -B rebind REBIND_DEBUG=1` builds a shim that traces every move on stderr.
REBIND_CFLAGS := -O2 -Wall -Wextra -fPIC -shared $(if $(filter 1,$(REBIND_DEBUG)),-DREBIND_DEBUG)

.PHONY: rebind demo

rebind: websockify/rebind.so

websockify/rebind.so: rebind/rebind.c
	$(CC) $(REBIND_CFLAGS) -o $@ $< -ldl

# Installs what is missing, then serves a TigerVNC desktop to the browser through
# the launcher: websockify --web <noVNC> 6080 -- vncserver :N …
demo:
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(DEMO_APT_PACKAGES)"
	@$(MAKE) --no-print-directory venv rebind
	DEMO_PORT=$(DEMO_PORT) DEMO_LISTEN=$(DEMO_LISTEN) NOVNC_DIR=$(NOVNC_DIR) \
		PYTHON=$(abspath $(PY)) scripts/demo.sh

.DEFAULT_GOAL := $(_launcher_default_goal)
