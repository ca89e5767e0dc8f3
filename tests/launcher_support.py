"""Helpers of the launcher tests: rebind.so and a static test server built from
source, the wrapped test programs, a WebSocket echo round trip, and process
checks by pid.

The wrapped program's own listener binds a fixed port such as 5901 on purpose:
rebind.so moves it to a free loopback port (at bind() already when 5901 is in
use), so it never collides with anything.  Every other port a test program
binds is really bound, so it is a free port (``free_port()``).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import (
    OP_BINARY,
    REPO,
    client_frame,
    http_status,
    open_websocket,
    read_server_frame,
)

PROGRAMS = REPO / "tests" / "programs"
REBIND_SOURCE = REPO / "rebind" / "rebind.c"


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed (make test installs gcc)"
    return compiler


def build_rebind(directory: Path, debug: bool = False) -> Path:
    """Compile rebind/rebind.c as the Makefile does; returns the .so path."""
    target = directory / ("rebind-debug.so" if debug else "rebind.so")
    flags = ["-DREBIND_DEBUG"] if debug else []
    subprocess.run([_compiler(), "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                    *flags, "-o", str(target), str(REBIND_SOURCE), "-ldl"],
                   check=True, timeout=60)
    return target


def build_static_echo(directory: Path) -> Path:
    """tests/programs/static_echo.c linked statically (libc6-dev ships libc.a)."""
    target = directory / "static_echo"
    subprocess.run([_compiler(), "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(target), str(PROGRAMS / "static_echo.c")], check=True, timeout=60)
    return target


def echo_server(*args: str) -> list[str]:
    """The command line of tests/programs/fixed_port_server.py."""
    return [sys.executable, str(PROGRAMS / "fixed_port_server.py"), *args]


def daemonized(command: list[str]) -> list[str]:
    """``command`` behind a wrapper that daemonizes it and exits 0 at once."""
    return [sys.executable, str(PROGRAMS / "daemonize.py"), *command]


def ws_roundtrip(port: int, payload: bytes) -> bytes:
    """Send one binary message through websockify on ``port``; return the first reply."""
    sock, head = open_websocket(port)
    try:
        assert http_status(head) == 101, head
        sock.sendall(client_frame(OP_BINARY, payload))
        opcode, _, data = read_server_frame(sock)
        assert opcode == OP_BINARY, (opcode, data)
        return data
    finally:
        sock.close()


def ws_send(port: int, payload: bytes) -> None:
    """Send one binary message and close at once (e.g. ``EXIT 3`` to the test server)."""
    sock, head = open_websocket(port)
    try:
        assert http_status(head) == 101, head
        sock.sendall(client_frame(OP_BINARY, payload))
        time.sleep(0.2)
    finally:
        sock.close()


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def exists(pid: int) -> bool:
    """Whether ``pid`` is in the process table at all (a zombie counts: not reaped)."""
    return Path(f"/proc/{pid}").exists()


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        if child not in found:
            found.add(child)
            pending.extend(children.get(child, []))
    return found


def zombies_of(pid: int) -> list[int]:
    """Children of ``pid`` that ended and were not reaped."""
    found = []
    for child in descendants(pid):
        try:
            fields = Path(f"/proc/{child}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == pid:
            found.append(child)
    return found


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing is bound to now, for a test that must name it before its
    program binds it (upstream's form, servers that keep their port).

    It lies below the kernel's ephemeral range, so no bind to port 0 and no
    outgoing connection on this machine (the shim's moved listeners included)
    takes it in the meantime; and it is never handed out twice.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10000, max(10001, low))
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise AssertionError("no free port below the ephemeral range")


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on every address, IPv4 and IPv6."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 here
                return False
    return True
