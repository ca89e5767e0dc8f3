"""Helpers of the launcher tests: rebind.so built from source, the wrapped test
programs, a WebSocket echo round trip, and process checks by pid.

The wrapped programs bind fixed ports such as 5901 on purpose: rebind.so moves
those binds to free loopback ports, so a fixed port never collides with anything,
not even with a port in use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import REPO, TIMEOUT, client_frame, open_websocket, read_server_frame

PROGRAMS = REPO / "tests" / "programs"
REBIND_SOURCE = REPO / "rebind" / "rebind.c"


def build_rebind(directory: Path, debug: bool = False) -> Path:
    """Compile rebind/rebind.c as the Makefile does; returns the .so path."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed (make test installs gcc)"
    target = directory / ("rebind-debug.so" if debug else "rebind.so")
    flags = ["-DREBIND_DEBUG"] if debug else []
    subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", *flags,
                    "-o", str(target), str(REBIND_SOURCE), "-ldl"], check=True, timeout=60)
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
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        sock.sendall(client_frame(0x2, payload))
        opcode, _, data = read_server_frame(sock)
        assert opcode == 0x2, (opcode, data)
        return data
    finally:
        sock.close()


def ws_send(port: int, payload: bytes) -> None:
    """Send one binary message and close at once (e.g. ``EXIT 3`` to the test server)."""
    sock, head = open_websocket(port)
    try:
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        sock.sendall(client_frame(0x2, payload))
        time.sleep(0.2)
    finally:
        sock.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


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


def free_port() -> int:
    """A port nothing listens on now, for tests that must name websockify's port
    before starting it (upstream's form); the kernel hands out ephemeral ports in turn."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
