"""The Debian package: ``make deb`` builds it, and it is right.

- Inspected: its name, relations (Debian's python3-gevent, python3-gevent-websocket,
  python3-numpy; it takes over python3-websockify), contents, maintainer scripts,
  the man page against the parser, and lintian.
- Installed, run, removed and purged in a throwaway root (an overlay of ``/`` in
  namespaces of its own, see tests/deb_support.py) with apt, as a user would: from
  that install ``websockify --web /usr/share/novnc 6080 -- Xtigervnc :1`` serves
  noVNC's page and the VNC server's greeting, ``rebind`` moves a port, ``apt
  remove`` leaves only the configuration and ``apt purge`` nothing at all; noVNC
  in headless Chromium shows the X server's screen through that install.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deb_support import ThrowawayRoot, build_deb
from tests.support import LISTENING, REPO, wait_until
from websockify import __version__
from websockify.cli import build_parser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root"),
]

SHIM = "/usr/lib/websockify/rebind.so"
CONFFILE = "/etc/websockify/6080.conf"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def contents(deb: Path) -> dict[str, str]:
    """Every path in the package (without the leading '.'), mapped to its ls-style line."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    found = {}
    for line in listing.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        found[name.lstrip(".").rstrip("/") or "/"] = line
    return found


def test_deb_is_named_for_the_version_and_architecture(deb: Path) -> None:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert deb.name == f"websockify_{__version__}_{arch}.deb"
    assert field(deb, "Version") == __version__
    assert field(deb, "Architecture") == arch


def test_deb_depends_on_debians_packages_and_takes_over_python3_websockify(deb: Path) -> None:
    depends = {d.split()[0] for d in field(deb, "Depends").split(", ")}
    assert {"python3-gevent", "python3-gevent-websocket", "python3-numpy"} <= depends
    assert {"python3-jwcrypto", "python3-redis", "python3-requests"} <= set(
        field(deb, "Suggests").split(", "))
    assert field(deb, "Provides") == f"python3-websockify (= {__version__})"
    assert field(deb, "Breaks") == f"python3-websockify (<< {__version__})"
    assert field(deb, "Replaces") == f"python3-websockify (<< {__version__})"


def test_deb_contents(deb: Path) -> None:
    files = contents(deb)
    for path in ("/usr/bin/websockify", "/usr/bin/rebind", SHIM,
                 "/usr/share/man/man1/websockify.1.gz", "/usr/share/man/man1/rebind.1.gz",
                 "/lib/systemd/system/websockify@.service",
                 "/lib/systemd/system/websockify@.socket", CONFFILE,
                 "/usr/share/doc/websockify/copyright",
                 "/usr/lib/python3/dist-packages/websockify/__init__.py",
                 "/usr/lib/python3/dist-packages/websockify/protocol/hybi.py"):
        assert path in files, path
    docs = {Path(p).name.removesuffix(".gz") for p in files if p.startswith("/usr/share/doc/")}
    assert {"README.md", "rebind.md", "copyright", "changelog"} <= docs
    assert files[SHIM].startswith("-rw-r--r--")
    assert files["/usr/bin/rebind"].startswith("-rwxr-xr-x")
    link = files["/usr/lib/python3/dist-packages/websockify/rebind.so"]
    assert link.startswith("l") and link.endswith("-> ../../../websockify/rebind.so")
    assert sorted(p for p in files if p.endswith(".so")) == [
        "/usr/lib/python3/dist-packages/websockify/rebind.so", SHIM]
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in files if p.startswith("/usr/lib/python3/dist-packages/tests")]


def test_deb_shim_is_built_with_debians_hardening_flags(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    shim = str(tmp_path / SHIM.lstrip("/"))
    headers = subprocess.run(["readelf", "-lWd", shim], capture_output=True, text=True,
                             check=True).stdout
    assert "GNU_RELRO" in headers and "BIND_NOW" in headers, headers


def test_deb_maintainer_scripts_compile_python_and_enable_nothing(
        deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    scripts = {p.name: p.read_text() for p in (tmp_path / "control").iterdir()}
    assert set(scripts) == {"control", "md5sums", "conffiles", "postinst", "prerm"}
    assert scripts["conffiles"].split() == [CONFFILE]
    assert "py3compile -p websockify" in scripts["postinst"]
    assert "py3clean -p websockify" in scripts["prerm"]
    for name in ("postinst", "prerm"):
        assert "systemctl" not in scripts[name] and "deb-systemd" not in scripts[name]


def test_deb_passes_lintian(deb: Path) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", "--no-tag-display-limit",
                             str(deb)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions if action.help != argparse.SUPPRESS
            for name in action.option_strings]


def test_man_page_is_the_parsers_help(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    page = tmp_path / "usr/share/man/man1/websockify.1.gz"
    source = gzip.decompress(page.read_bytes()).decode()
    assert f'"websockify {__version__}"' in source
    for option in option_strings(build_parser()):
        assert f"\\fB{option.replace('-', chr(92) + '-')}\\fR" in source, option
    for action in build_parser()._actions:
        if action.help and action.help != argparse.SUPPRESS and "%(" not in action.help:
            assert action.help.replace("-", "\\-") in source, action.help
    rendered = {name: render_man_page(page.with_name(name))
                for name in ("websockify.1.gz", "rebind.1.gz")}
    assert "--unix-target FILE" in rendered["websockify.1.gz"]
    assert "OLD_PORT NEW_PORT COMMAND" in rendered["rebind.1.gz"]


def render_man_page(page: Path) -> str:
    """What man shows; groff's warnings fail the test."""
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(page)], capture_output=True, text=True,
        env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING=""))
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


def test_systemd_templates_verify(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    units = tmp_path / "lib/systemd/system"
    for kind in ("service", "socket"):
        (units / f"websockify@6080.{kind}").symlink_to(f"websockify@.{kind}")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "websockify@6080.socket"),
         str(units / "websockify@6080.service")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    service = (units / "websockify@.service").read_text()
    assert "StandardInput=socket" in service and "--inetd" in service
    assert "EnvironmentFile=/etc/websockify/%I.conf" in service


@pytest.mark.parametrize("args", [["5901", "5911"], ["0", "5911", "true"],
                                  ["5901", "65536", "true"], ["59o1", "5911", "true"]])
def test_rebind_command_refuses_a_wrong_command_line(args: list[str]) -> None:
    result = subprocess.run([str(REPO / "rebind" / "rebind"), *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(("usage: rebind", "rebind: invalid"))


# --- install, run, remove and purge in a throwaway root ---------------------------------

@pytest.fixture
def root(tmp_path: Path) -> Iterator[ThrowawayRoot]:
    throwaway = ThrowawayRoot(tmp_path / "throwaway")
    try:
        yield throwaway
    finally:
        throwaway.close()


#: A client in the root's network: noVNC's page, then what noVNC does first over the
#: WebSocket (RFB 3.8 handshake, security None, up to the server's framebuffer size),
#: then the port the rebind command moved.
CLIENT = """
import json, socket, struct, time
from tests.support import client_frame, open_websocket, read_server_frame
http = socket.create_connection(("127.0.0.1", 6080), timeout=10)
http.sendall(b"GET /vnc.html HTTP/1.0\\r\\n\\r\\n")
status = http.recv(64).split(b"\\r\\n")[0].decode()
sock, head = open_websocket(6080)
received = bytearray()
def read(n):
    while len(received) < n:
        received.extend(read_server_frame(sock)[2])
    data = bytes(received[:n]); del received[:n]; return data
greeting = read(12).decode()
sock.sendall(client_frame(0x2, b"RFB 003.008\\n"))
offered = read(read(1)[0])
sock.sendall(client_frame(0x2, b"\\x01"))
security = struct.unpack("!I", read(4))[0]
sock.sendall(client_frame(0x2, b"\\x01"))
width, height = struct.unpack("!HH", read(4))
deadline = time.monotonic() + 10  # `rebind`'s program may still be starting
while True:
    try:
        echo = socket.create_connection(("127.0.0.1", 5911), timeout=10)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
echo.sendall(b"moved")
print(json.dumps({"page": status, "upgrade": head.split(b"\\r\\n")[0].decode(),
                  "greeting": greeting, "offered": list(offered), "security": security,
                  "size": [width, height], "echo": echo.recv(64).decode()}))
"""


#: Dependencies whose installation by apt the round trip checks.
DEPENDENCIES = ("python3-gevent", "python3-gevent-websocket")


def remove_cached_dependencies(root: ThrowawayRoot) -> list[str]:
    """Remove DEPENDENCIES from the root when apt's cache holds their packages, so
    that installing the .deb must pull them (the root has no network); returns them.

    On a machine whose cache was cleaned they stay installed and the install
    resolves them as present."""
    archives = root.path("/var/cache/apt/archives")
    for package in DEPENDENCIES:
        version = root.run(f"dpkg-query -W -f='${{Version}}' {package}").stdout
        if not list(archives.glob(f"{package}_{version.replace(':', '%3a')}_*.deb")):
            return []
    root.run(f"apt-get remove -y {' '.join(DEPENDENCIES)}", timeout=300)
    return list(DEPENDENCIES)


#: noVNC in headless Chromium (as tests/test_vnc_browser.py drives it), in the root's
#: network: it connects to websockify on 6080 and prints the centre pixel of its canvas
#: once the X root window's colour (argv[1], "#rrggbb") shows there.
BROWSER = """
import json, shutil, sys, tempfile, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from tests.test_vnc_browser import CHROMIUM_FLAGS, READ_CANVAS
from tests.support import TIMEOUT
want = [320, 240, *bytes.fromhex(sys.argv[1].lstrip("#"))]
options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium")
profile = tempfile.mkdtemp()
for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
    options.add_argument(flag)
driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
try:
    driver.set_page_load_timeout(TIMEOUT)
    driver.get("http://127.0.0.1:6080/vnc.html?autoconnect=1&resize=off")
    deadline = time.monotonic() + 2 * TIMEOUT
    seen = driver.execute_script(READ_CANVAS)
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = driver.execute_script(READ_CANVAS)
    print(json.dumps(seen))
finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
"""


def status_of(root: ThrowawayRoot, package: str) -> str:
    return root.run(f"dpkg-query -W -f='${{Status}}' {package} 2>/dev/null || true").stdout


def test_deb_installs_serves_novnc_and_removes_cleanly(
        deb: Path, root: ThrowawayRoot, tmp_path: Path) -> None:
    files = contents(deb)
    shutil.copy(deb, root.path(f"/tmp/{deb.name}"))
    # man-db's trigger would rebuild the whole index: not what is tested here.
    root.run("rm -f /var/lib/man-db/auto-update")
    pulled = remove_cached_dependencies(root)
    installed = root.run(f"apt-get install -y /tmp/{deb.name}", timeout=300).stdout
    new = re.search(r"NEW packages will be installed:\n((?: .*\n)+)", installed)
    assert set(pulled) <= set(new.group(1).split() if new else []), installed
    assert status_of(root, "websockify") == "install ok installed"
    assert not status_of(root, "python3-websockify").endswith(" installed"), installed
    assert root.run("websockify --version").stdout.strip() == f"websockify {__version__}"
    assert root.run(
        "python3 -c 'from websockify.launcher import find_rebind; print(find_rebind(None))'"
    ).stdout.strip() == SHIM
    assert root.run("find /etc/systemd -name 'websockify*'").stdout == ""  # nothing enabled
    assert root.run("man -w websockify").stdout.strip() == "/usr/share/man/man1/websockify.1.gz"

    log = tmp_path / "websockify.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(root.command(
            "echo $$ > /tmp/websockify.pid && exec websockify --web /usr/share/novnc 6080 "
            "-- Xtigervnc :1 -SecurityTypes None -geometry 320x240"),
            stdout=out, stderr=subprocess.STDOUT)
        moved = subprocess.Popen(root.command(
            f"exec rebind 5901 5911 python3 {REPO}/tests/programs/fixed_port_server.py "
            "--port 5901"), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: LISTENING.search(log.read_text(errors="replace"))
                   and "moved to 127.0.0.1" in log.read_text(errors="replace"),
                   "websockify and Xtigervnc to listen")
        seen = json.loads(root.run_python_here(CLIENT))
        assert seen["page"] == "HTTP/1.1 200 OK", seen
        assert seen["upgrade"] == "HTTP/1.1 101 Switching Protocols", seen
        assert seen["greeting"].startswith("RFB 003.0"), seen
        assert 1 in seen["offered"] and seen["security"] == 0, seen
        assert seen["size"] == [320, 240], seen
        assert seen["echo"] == "moved", seen
        root.run("xsetroot -display :1 -solid '#ff8000'")
        canvas = json.loads(root.run_python_here(BROWSER, "#ff8000"))
        assert canvas == [320, 240, 0xff, 0x80, 0x00], canvas
        root.run("kill -TERM $(cat /tmp/websockify.pid)")
        assert server.wait(30) == 0, log.read_text()
    finally:
        for process in (server, moved):
            if process.poll() is None:
                process.terminate()
                process.wait(30)

    assert_socket_unit_serves(root, tmp_path)

    root.run("apt-get remove -y websockify", timeout=300)
    assert status_of(root, "websockify") == "deinstall ok config-files"
    left = [p for p, line in files.items()
            if not line.startswith("d") and p != CONFFILE and os.path.lexists(root.path(p))]
    assert left == []
    assert not root.path("/usr/lib/python3/dist-packages/websockify").exists()
    assert root.path(CONFFILE).is_file()

    root.run("apt-get purge -y websockify", timeout=300)
    assert status_of(root, "websockify") in ("", "unknown ok not-installed")
    assert not root.path("/etc/websockify").exists()
    assert leftovers(root.upper()) == []


def leftovers(upper: Path) -> list[str]:
    """Files the package left in the root: anything named websockify in the overlay's
    upper layer that is not a whiteout (a deletion) or apt's log."""
    found = []
    for path in upper.rglob("*websockify*"):
        info = path.lstat()
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            continue  # a whiteout: something of the host's was deleted there
        relative = "/" + path.relative_to(upper).as_posix()
        if not relative.startswith("/var/log/"):
            found.append(relative)
    return found


#: What systemd does for websockify@6080.socket + .service: the listening socket as
#: standard input, then the unit's ExecStart (argv given after -c's code).
SOCKET_AS_STDIN = """
import os, socket, sys
listener = socket.create_server(("0.0.0.0", 6080))
os.dup2(listener.fileno(), 0)
os.execv(sys.argv[1], sys.argv[1:])
"""

GREETING = """
from tests.support import open_websocket, read_server_frame
sock, head = open_websocket(6080)
print(read_server_frame(sock)[2].decode())
"""


def assert_socket_unit_serves(root: ThrowawayRoot, tmp_path: Path) -> None:
    """The unit's ExecStart with the packaged /etc/websockify/6080.conf, given the
    listening socket as systemd gives it, relays to a VNC server on 5900."""
    unit = root.path("/lib/systemd/system/websockify@.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
    args = root.run(". /etc/websockify/6080.conf && printf %s \"$WEBSOCKIFY_ARGS\"").stdout
    argv = shlex.split(exec_start.replace("$WEBSOCKIFY_ARGS", args))
    log = tmp_path / "unit.log"
    with open(log, "wb") as out:
        vnc = subprocess.Popen(root.command("exec Xtigervnc :0 -SecurityTypes None"),
                               stdout=out, stderr=subprocess.STDOUT)
        launch = f"exec python3 -c {shlex.quote(SOCKET_AS_STDIN)} {shlex.join(argv)}"
        service = subprocess.Popen(root.command(f"echo $$ > /tmp/unit.pid && {launch}"),
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "port 5900" in log.read_text(errors="replace")
                   and LISTENING.search(log.read_text(errors="replace")), "the unit to listen")
        assert root.run_python_here(GREETING).startswith("RFB 003.0")
        root.run("kill -TERM $(cat /tmp/unit.pid)")
        assert service.wait(30) == 0, log.read_text()
    finally:
        for process in (service, vnc):
            if process.poll() is None:
                process.terminate()
                process.wait(30)
