"""Real processes and sockets for the tests: websockify subprocesses and TCP targets.

Everything listens on 127.0.0.1 with port 0 and reports the port it got, so no
test guesses a free port.  Every wait is bounded by ``TIMEOUT`` (scaled by the
environment variable WEBSOCKIFY_TEST_TIMEOUT_SCALE on slow machines).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TIMEOUT = 10.0 * float(os.environ.get("WEBSOCKIFY_TEST_TIMEOUT_SCALE", "1"))
REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (?:\[(?P<h6>[^\]]+)\]|(?P<h4>[^\s:]+)):(?P<port>\d+)")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT,
               interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class TcpServer:
    """A threaded server running ``serve(conn)`` per connection.

    TCP on 127.0.0.1 port 0 by default; ``unix_path`` makes it a unix-socket server.
    """

    def __init__(self, serve: Callable[[socket.socket], None], family: int = socket.AF_INET,
                 host: str = "127.0.0.1", unix_path: Path | None = None) -> None:
        self._serve = serve
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(unix_path))
            self.port = 0
        else:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, 0))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(128)
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


def echo(conn: socket.socket) -> None:
    """Send back every byte received, until EOF."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


class Websockify:
    """A websockify subprocess started from the command line, as a user would.

    ``program`` replaces ``python -m websockify`` (an installed websockify, run from
    ``cwd`` outside the tree, or a launcher that execs it); ``pass_fds`` are
    descriptors it inherits.  Its log goes to a file (never a pipe that could fill);
    ``port`` is read from the "listening on" line.
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 wait_listening: bool = True, stdin: object = None,
                 program: list[str] | None = None, cwd: Path = REPO,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, "-m", "websockify"]), *args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=stdin or subprocess.DEVNULL,
            cwd=cwd, env=full_env, pass_fds=pass_fds,
        )
        self.port = 0
        if wait_listening:
            self.port = self.wait_for_log(LISTENING, what="listening line")
        self.host = "127.0.0.1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: re.Pattern[str] | str, what: str = "log line",
                     timeout: float = TIMEOUT) -> int:
        """Wait for ``pattern`` in the log; returns the int of a ``port`` group if any."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                port = match.groupdict().get("port")
                return int(port) if port else 0
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no {what} ({regex.pattern!r}); exit={self.proc.poll()}\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self._log.close()
        return self.proc.returncode


@contextmanager
def websockify(tmp_path: Path, *args: str, **kwargs) -> Iterator[Websockify]:
    """Run websockify with ``args`` for the duration of a with-block."""
    server = Websockify(list(args), tmp_path / f"websockify-{time.monotonic_ns()}.log", **kwargs)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# A raw-socket RFC 6455 client, written independently of the server's codec so
# that the tests check the server against the RFC, not against itself.

def client_frame(opcode: int, payload: bytes, fin: bool = True,
                 mask: bytes | None = b"\x37\xfa\x21\x3d", rsv: int = 0) -> bytes:
    """One client-to-server frame; ``mask=None`` sends it unmasked (a violation)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask is None:
        return header + payload
    if length < 4096:
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        masked = _xor(payload, mask)
    return header + mask + masked


def _xor(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_server_frame(sock: socket.socket) -> tuple[int, bool, bytes]:
    """Read one server frame: (opcode, fin, payload). Server frames must be unmasked."""
    first, second = recv_exact(sock, 2)
    assert second & 0x80 == 0, "server frames must not be masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", recv_exact(sock, 8))
    return first & 0x0F, bool(first & 0x80), recv_exact(sock, length)


def read_http_head(sock: socket.socket) -> bytes:
    """Read an HTTP response head up to and including the blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def open_websocket(port: int, protocols: str | None = "binary", path: str = "/",
                   version: str = "13", extra: str = "") -> tuple[socket.socket, bytes]:
    """Connect and send an RFC 6455 upgrade; returns the socket and the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             f"Sec-WebSocket-Version: {version}"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    request = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    sock.sendall(request.encode())
    return sock, read_http_head(sock)


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
