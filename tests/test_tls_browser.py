"""noVNC in headless Chromium over https:// and wss://, its target chosen by a token.

A real VNC server (Xtigervnc on its own display and port) is named in a token
file; Chromium loads noVNC from websockify's --web over TLS and connects with
``path=websockify?token=…``, as noVNC's documentation tells users to.  The colour
painted on the X root window must come out of noVNC's canvas.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import TIMEOUT, websockify
from tests.test_vnc_browser import (
    NOVNC,
    canvas_shows,
    chromium_driver,
    free_display,
    need,
    paint_root,
)
from tests.tls_support import Pki

pytestmark = pytest.mark.slow


def test_novnc_over_wss_with_a_token(tmp_path: Path) -> None:
    need("Xtigervnc", "xsetroot")
    assert (NOVNC / "vnc.html").is_file(), f"noVNC not in {NOVNC} (make test installs novnc)"
    cert, key = Pki(tmp_path / "pki").issue("server")
    display = free_display()
    xvnc = subprocess.Popen(
        ["Xtigervnc", f":{display}", "-SecurityTypes", "None", "-geometry", "320x240",
         "-depth", "24", "-localhost", "-AlwaysShared"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk-{display}: 127.0.0.1:{5900 + display}\n")
    try:
        paint_root(display, "#30a060")
        with websockify(tmp_path, "--web", str(NOVNC), "--cert", str(cert), "--key", str(key),
                        "--ssl-only", "--token-plugin", "TokenFile", "--token-source",
                        str(tokens), "127.0.0.1:0") as server, \
                chromium_driver(tmp_path, "--ignore-certificate-errors") as driver:
            driver.get(f"https://127.0.0.1:{server.port}/vnc.html?autoconnect=1&resize=off"
                       f"&path=websockify%3Ftoken%3Ddesk-{display}")
            canvas_shows(driver, 320, 240, (0x30, 0xa0, 0x60))
            server.wait_for_log(f"connected to target 127.0.0.1:{5900 + display}")
            assert "plain connection refused" not in server.log()
    finally:
        xvnc.terminate()
        xvnc.wait(TIMEOUT)
