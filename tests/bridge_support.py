"""Helpers for the end-to-end bridge tests (tests/test_bridge_*.py).

Everything here drives real sockets and real processes: recording and flooding
TCP targets, a unix-socket echo server, the python-websockets client, /proc
probes of the websockify subprocess and socket-level faults (resets, background
senders).  Nothing mocks the server.  The raw RFC 6455 client and the bounded
poll (``wait_until``) are in ``tests.support``, the one place for them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect, unix_connect
from websockets.typing import Subprotocol

from tests.support import (
    TIMEOUT,
    TcpServer,
    wait_until,
)
from tests.support import echo as echo_each_connection


def wait_exit(proc: subprocess.Popen, timeout: float = TIMEOUT) -> int:
    """The exit status of ``proc`` (a Popen), failing if it runs past ``timeout``."""
    wait_until(lambda: proc.poll() is not None, "websockify to exit", timeout)
    return proc.returncode


# ---------------------------------------------------------------------------
# /proc probes of the server process

def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------
# Targets

@dataclass
class Peer:
    """One connection the server opened to a target, as the target saw it."""

    sock: socket.socket
    data: bytearray = field(default_factory=bytearray)
    eof: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> bytes:
        with self.lock:
            return bytes(self.data)


class RecordingTarget:
    """A TCP target that records what each connection sends it and sees its EOF.

    With ``echo`` it also sends every byte back; ``greeting`` is sent first, and
    ``close_after_greeting`` makes the target hang up right after it.
    """

    def __init__(self, echo: bool = True, greeting: bytes = b"",
                 close_after_greeting: bool = False, family: int = socket.AF_INET,
                 host: str = "127.0.0.1") -> None:
        self.echo = echo
        self.greeting = greeting
        self.close_after_greeting = close_after_greeting
        self.peers: list[Peer] = []
        self._server = TcpServer(self._serve, family=family, host=host)
        self.port = self._server.port

    def _serve(self, conn: socket.socket) -> None:
        peer = Peer(conn)
        self.peers.append(peer)
        try:
            if self.greeting:
                conn.sendall(self.greeting)
            if self.close_after_greeting:
                return
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                with peer.lock:
                    peer.data += chunk
                if self.echo:
                    conn.sendall(chunk)
        finally:
            peer.eof.set()

    def peer(self, index: int, timeout: float = TIMEOUT) -> Peer:
        """The ``index``-th connection (0-based), waiting for it to arrive."""
        wait_until(lambda: len(self.peers) > index, f"target connection #{index}", timeout)
        return self.peers[index]

    def close(self) -> None:
        self._server.close()


class FloodTarget:
    """A TCP target that sends ``sizes[i]`` bytes to its i-th connection, then closes.

    The bytes are ``block`` repeated (and cut), so the client can check them by
    hash; ``sent`` counts what each connection has handed to the kernel so far.
    """

    CHUNK = 256 * 1024

    def __init__(self, sizes: list[int], block: bytes) -> None:
        self.sizes = sizes
        self.block = block
        self.sent: list[int] = []
        self._server = TcpServer(self._serve)
        self.port = self._server.port

    def expected_sha256(self, index: int) -> str:
        digest = hashlib.sha256()
        for piece in self._pieces(self.sizes[index]):
            digest.update(piece)
        return digest.hexdigest()

    def _pieces(self, size: int) -> Iterator[memoryview]:
        view = memoryview(self.block)
        left = size
        while left:
            for start in range(0, len(view), self.CHUNK):
                piece = view[start:start + min(self.CHUNK, left)]
                yield piece
                left -= len(piece)
                if not left:
                    return

    def _serve(self, conn: socket.socket) -> None:
        index = len(self.sent)
        self.sent.append(0)
        for piece in self._pieces(self.sizes[index]):
            conn.sendall(piece)
            self.sent[index] += len(piece)

    def close(self) -> None:
        self._server.close()


def unix_echo_server(path: Path) -> TcpServer:
    """An echo server on the unix socket ``path`` (a thread per connection)."""
    return TcpServer(echo_each_connection, unix_path=path)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens (held bound, so nobody can take it)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# The third-party client (python-websockets)

def ws_connect(port: int, protocols: list[str] | None = None, host: str = "127.0.0.1",
               path: str = "/", tls: ssl.SSLContext | None = None,
               **kwargs: Any) -> ClientConnection:
    """A python-websockets client; ``protocols`` defaults to ["binary"]; wss:// with ``tls``."""
    offered = ["binary"] if protocols is None else protocols
    options: dict[str, Any] = {"subprotocols": [Subprotocol(p) for p in offered],
                     "open_timeout": TIMEOUT, "close_timeout": TIMEOUT, "max_size": None,
                     "compression": None, "ping_interval": None, "proxy": None}
    if tls is not None:
        options["ssl"] = tls
    options.update(kwargs)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return connect(f"{'wss' if tls else 'ws'}://{netloc}{path}", **options)


def ws_unix_connect(path: Path) -> ClientConnection:
    return unix_connect(str(path), "ws://localhost/", subprotocols=[Subprotocol("binary")],
                        open_timeout=TIMEOUT, close_timeout=TIMEOUT, max_size=None,
                        compression=None, ping_interval=None)


def recv_bytes(ws: ClientConnection, size: int, timeout: float = TIMEOUT) -> bytes:
    """Receive binary messages until exactly ``size`` bytes have arrived."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < size:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        assert isinstance(message, bytes), f"expected a binary message, got {message!r:.80}"
        data += message
    assert len(data) == size, f"got {len(data)} bytes, expected {size}"
    return bytes(data)


def echo_roundtrip(port: int, payload: bytes = b"still serving") -> None:
    """Prove the server still bridges: one binary message there and back."""
    with ws_connect(port) as ws:
        ws.send(payload)
        assert recv_bytes(ws, len(payload)) == payload


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall() in a thread; the server may hang up before reading it all."""
    def run() -> None:
        with suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
