"""Helpers for the end-to-end bridge tests (tests/test_bridge_*.py).

Everything here drives real sockets and real processes: recording and flooding
TCP targets, a unix-socket echo server, a buffered raw RFC 6455 frame reader,
/proc probes of the websockify subprocess and a bounded poll.  Nothing mocks the
server; the raw-frame code builds on ``tests.support`` so that the wire format is
checked against the RFC, not against the server's own codec.
"""

from __future__ import annotations

import base64
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
    client_frame,
    read_http_head,
    recv_exact,
    wait_until,
)
from tests.support import echo as echo_each_connection

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


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


# ---------------------------------------------------------------------------
# Raw RFC 6455 client pieces

def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def http_status(head: bytes) -> int:
    """The status code of an HTTP response head (0 if there is none)."""
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def http_header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


def upgrade_request(protocols: str | None = "binary", version: str = "13", path: str = "/",
                    host: str | None = "localhost", key: str | None = None,
                    http_version: str = "HTTP/1.1") -> bytes:
    """An RFC 6455 upgrade request; ``host=None`` leaves the Host header out."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} {http_version}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             f"Sec-WebSocket-Version: {version}"]
    if host is not None:
        lines.insert(1, f"Host: {host}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade(sock: socket.socket, protocols: str | None = "binary", version: str = "13",
            path: str = "/", host: str = "localhost", key: str | None = None) -> bytes:
    """Send an RFC 6455 upgrade request on ``sock``; returns the response head."""
    sock.sendall(upgrade_request(protocols, version, path, host, key))
    return read_http_head(sock)


def raw_client(port: int, rcvbuf: int = 0) -> socket.socket:
    """A raw socket upgraded to a WebSocket (binary); ``rcvbuf`` makes it a slow reader
    with a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    assert http_status(upgrade(sock)) == 101
    return sock


def raw_request(port: int, request: bytes, timeout: float = TIMEOUT) -> tuple[int, bytes, bytes]:
    """Send raw bytes as an HTTP request; returns (status, head, body).

    The body is read by Content-Length, or to EOF without one.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        head = read_http_head(sock)
        length = http_header(head, "Content-Length")
        body = bytearray()
        if length is not None:
            body += recv_exact(sock, int(length))
        else:
            with suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    body += chunk
        return http_status(head), head, bytes(body)


@dataclass
class CloseResult:
    """How the server ended a raw connection."""

    code: int | None
    reason: bytes
    data: bytes  # data-frame payloads received before the Close frame
    pings: list[bytes]


class FrameReader:
    """Reads server frames from a raw socket through a buffer (fast for big streams)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(1 << 20, n - len(self.buf)))
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buf)} of {n} bytes buffered")
            self.buf += chunk

    def _take(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_frame(self) -> tuple[int, bool, bytes]:
        """One frame: (opcode, fin, payload); asserts the server did not mask it."""
        first, second = self._take(2)
        assert second & 0x80 == 0, "server frames must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, bool(first & 0x80), self._take(length)

    def expect_close(self) -> CloseResult:
        """Read frames until the server's Close; fails on EOF before it."""
        data = bytearray()
        pings: list[bytes] = []
        while True:
            try:
                opcode, _, payload = self.read_frame()
            except (EOFError, ConnectionResetError) as error:
                raise AssertionError(f"TCP closed before a Close frame: {error}") from error
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return CloseResult(code, payload[2:], bytes(data), pings)
            if opcode == OP_PING:
                pings.append(payload)
            elif opcode in (OP_CONT, OP_TEXT, OP_BINARY):
                data += payload


def expect_close(sock: socket.socket) -> CloseResult:
    return FrameReader(sock).expect_close()


def assert_tcp_closed(sock: socket.socket, timeout: float = TIMEOUT) -> None:
    """The server hangs up (EOF or reset) within ``timeout`` and sends nothing more."""
    sock.settimeout(timeout)
    extra = bytearray()
    try:
        while chunk := sock.recv(65536):
            extra += chunk
    except ConnectionResetError:
        pass
    except TimeoutError as error:
        raise AssertionError(f"server kept the TCP connection open for {timeout}s") from error
    assert not extra, f"server sent {len(extra)} bytes after its Close frame: {bytes(extra[:40])!r}"


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def send_close(sock: socket.socket, code: int = 1000, reason: bytes = b"") -> None:
    sock.sendall(client_frame(OP_CLOSE, close_payload(code, reason)))


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
