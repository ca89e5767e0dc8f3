"""A real VNC server under the launcher, seen by noVNC in headless Chromium.

Xtigervnc keeps its own port (5900+N); rebind.so moves it and websockify relays
noVNC's WebSocket to it.  The X root window is painted with xsetroot and the
colour is read back from noVNC's canvas: real framebuffer pixels through the
whole path.  A second test runs TigerVNC's vncserver (which daemonizes) and checks
by pid that its whole session is gone once websockify is stopped; a third opens a
terminal in that session which starts a web server on a port of its own.

`make test` installs every program these tests need (LAUNCHER_APT_PACKAGES and
LAUNCHER_PIP_PACKAGES in mk/launcher.mk); they skip only when run without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.launcher_support import descendants, exists, free_port, port_is_free
from tests.support import (
    TIMEOUT,
    Websockify,
    http_status,
    open_websocket,
    read_server_frame,
    wait_until,
)

pytestmark = pytest.mark.slow

NOVNC = Path(os.environ.get("NOVNC_DIR", "/usr/share/novnc"))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
#: The centre pixel of noVNC's canvas: (width, height, r, g, b), or null before it draws.
READ_CANVAS = """
const canvas = document.querySelector('#noVNC_container canvas');
if (!canvas || !canvas.width) return null;
const x = Math.floor(canvas.width / 2), y = Math.floor(canvas.height / 2);
const [r, g, b] = canvas.getContext('2d').getImageData(x, y, 1, 1).data;
return [canvas.width, canvas.height, r, g, b];
"""


def need(*programs: str) -> None:
    missing = [name for name in programs if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test installs it)")


def free_display() -> int:
    """An X display number no server uses (lock file and socket both absent)."""
    for number in range(40, 100):
        if not (Path(f"/tmp/.X{number}-lock").exists()
                or Path(f"/tmp/.X11-unix/X{number}").exists()):
            return number
    raise AssertionError("no free X display between :40 and :99")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by Selenium through Debian's chromedriver."""
    with chromium_driver(tmp_path) as driver:
        yield driver


@contextlib.contextmanager
def chromium_driver(tmp_path: Path, *extra_flags: str) -> Iterator[Any]:
    """Headless Chromium with CHROMIUM_FLAGS and ``extra_flags``; skips if it is missing."""
    need("chromium", "chromedriver")
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium not installed (make test installs it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=Service(shutil.which("chromedriver") or ""))
    driver.set_page_load_timeout(TIMEOUT)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def paint_root(display: int, colour: str) -> None:
    """xsetroot -solid, retried until the X server accepts connections (bounded)."""
    wait_until(lambda: subprocess.run(["xsetroot", "-display", f":{display}", "-solid", colour],
                                      capture_output=True, timeout=TIMEOUT,
                                      check=False).returncode == 0,
               f"X display :{display} to accept xsetroot", interval=0.1)


def canvas_shows(driver: Any, width: int, height: int, rgb: tuple[int, int, int]) -> None:
    last: list[Any] = []

    def matches() -> bool:
        last[:] = [driver.execute_script(READ_CANVAS)]
        return last[0] == [width, height, *rgb]

    try:
        wait_until(matches, f"noVNC's canvas to show {rgb}", timeout=2 * TIMEOUT)
    except AssertionError as error:
        raise AssertionError(f"{error}; canvas centre: {last}") from None


def test_novnc_in_chromium_shows_the_x_root_colour_through_the_launcher(
        tmp_path: Path, rebind: Path, chromium: Any) -> None:
    need("Xtigervnc", "xsetroot")
    assert (NOVNC / "vnc.html").is_file(), f"noVNC not in {NOVNC} (make test installs novnc)"
    display = free_display()
    server = Websockify(
        ["--web", str(NOVNC), "--rebind", str(rebind), "127.0.0.1:0", "--",
         "Xtigervnc", f":{display}", "-SecurityTypes", "None", "-geometry", "320x240",
         "-depth", "24", "-localhost", "-AlwaysShared"],
        tmp_path / "websockify.log")
    try:
        server.wait_for_log(f"listens on port {5900 + display}, moved to")
        paint_root(display, "#ff8000")
        chromium.get(f"http://127.0.0.1:{server.port}/vnc.html?autoconnect=1&resize=off")
        canvas_shows(chromium, 320, 240, (0xff, 0x80, 0x00))
        paint_root(display, "#2040c0")
        canvas_shows(chromium, 320, 240, (0x20, 0x40, 0xc0))
        xvnc = descendants(server.proc.pid)
    finally:
        assert server.stop() == 0
    assert [pid for pid in xvnc if exists(pid)] == []


@pytest.mark.parametrize("form", ["own port", "upstream"])
def test_vncserver_session_is_followed_and_stopped_by_pid(
        tmp_path: Path, rebind: Path, form: str) -> None:
    """`websockify PORT -- vncserver :N`: the wrapper exits 0 soon, Xtigervnc serves.

    In upstream's form websockify itself listens on 5900+N, the port vncserver
    checks and Xtigervnc binds.
    """
    need("vncserver", "Xtigervnc")
    display = free_display()
    listen = f"127.0.0.1:{5900 + display}" if form == "upstream" else "127.0.0.1:0"
    xstartup = tmp_path / "xstartup"
    xstartup.write_text("#!/bin/sh\nsleep 600 &\nwait\n")
    xstartup.chmod(0o755)
    env = {"HOME": str(tmp_path), "USER": os.environ.get("USER", "root")}
    server = Websockify(
        ["--rebind", str(rebind), listen, "--", "vncserver", f":{display}",
         "-SecurityTypes", "None", "--I-KNOW-THIS-IS-INSECURE", "-localhost", "yes",
         "-geometry", "320x240", "-xstartup", str(xstartup)],
        tmp_path / "websockify.log", env=env)
    try:
        # vncserver's first process exits 0 once the session runs; websockify follows on.
        server.wait_for_log(r"wrapped command \(pid \d+\) exited with status 0")
        sock, head = open_websocket(server.port)
        with sock:
            assert http_status(head) == 101, head
            assert read_server_frame(sock)[2].startswith(b"RFB 003.0")
        def session_names() -> set[str]:
            names = set()
            for pid in descendants(server.proc.pid):
                with contextlib.suppress(OSError):
                    names.add(Path(f"/proc/{pid}/comm").read_text().strip())
            return names

        wait_until(lambda: {"Xtigervnc", "vncserver", "xstartup", "sleep"} <= session_names(),
                   "the whole vncserver session")
        session = descendants(server.proc.pid)
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
    assert [pid for pid in session if exists(pid)] == []


def answers(url: str, body: bytes) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return bool(response.read() == body)
    except OSError:
        return False


def test_a_server_started_from_a_terminal_in_the_desktop_keeps_its_port(
        tmp_path: Path, rebind: Path) -> None:
    """`python3 -m http.server 8000` typed into an xterm of the wrapped vncserver's
    session listens on 8000, not on a port the shim picked; the desktop is relayed."""
    need("vncserver", "Xtigervnc", "xterm")
    display = free_display()
    port = 8000 if port_is_free(8000) else free_port()
    served = tmp_path / "served"
    served.mkdir()
    (served / "hello.txt").write_bytes(b"from the desktop\n")
    xstartup = tmp_path / "xstartup"
    xstartup.write_text(f"#!/bin/sh\ncd {served}\n"
                        f"exec xterm -e {sys.executable} -m http.server {port}\n")
    xstartup.chmod(0o755)
    env = {"HOME": str(tmp_path), "USER": os.environ.get("USER", "root")}
    server = Websockify(
        ["--rebind", str(rebind), "127.0.0.1:0", "--", "vncserver", f":{display}",
         "-SecurityTypes", "None", "--I-KNOW-THIS-IS-INSECURE", "-localhost", "yes",
         "-geometry", "320x240", "-xstartup", str(xstartup)],
        tmp_path / "websockify.log", env=env)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/hello.txt", b"from the desktop\n"),
                   f"the terminal's web server on port {port}", timeout=2 * TIMEOUT)
        sock, head = open_websocket(server.port)
        with sock:
            assert http_status(head) == 101, head
            assert read_server_frame(sock)[2].startswith(b"RFB 003.0")
        moved = [line for line in server.log().splitlines() if "listens on port" in line]
        assert moved and all(f"port {5900 + display}," in line for line in moved), moved
    finally:
        assert server.stop() == 0
