"""Real processes and sockets for the tests: websockify subprocesses and TCP targets.

Everything listens on 127.0.0.1 with port 0 and reports the port it got, so no
test guesses a free port.  Every wait is bounded by ``TIMEOUT`` (scaled by the
environment variable WEBSOCKIFY_TEST_TIMEOUT_SCALE on slow machines).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
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
from dataclasses import dataclass
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


def reap(proc: subprocess.Popen) -> int:
    """Wait up to TIMEOUT for ``proc`` to exit, then kill it; its exit status."""
    try:
        return proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(TIMEOUT)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to ``proc`` if it still runs and reap it (killed after TIMEOUT)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return reap(proc)


def _websockify_command() -> list[str]:
    """The ``websockify`` console script beside the interpreter running the tests
    (make test's .venv installs it); ``python -m websockify`` where there is none
    (the Debian-python run, which tests the source tree on Debian's own gevent)."""
    script = Path(sys.executable).with_name("websockify")
    return [str(script)] if script.exists() else [sys.executable, "-m", "websockify"]


WEBSOCKIFY_COMMAND = _websockify_command()
#: The environment in which the installed command finds plugins of the tests package
#: by dotted path, as a user's own plugin module must be on PYTHONPATH.
PLUGIN_PATH = {"PYTHONPATH": str(REPO)}


class Websockify:
    """A websockify subprocess started from the command line, as a user would.

    By default it is the ``websockify`` command the venv installed (its console-script
    entry point, as users run it; see :func:`_websockify_command`).  ``program``
    replaces it (an installed websockify, run from ``cwd`` outside the tree, or a
    launcher that execs it); ``pass_fds`` are
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
            [*(program or WEBSOCKIFY_COMMAND), *args],
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
        stop_process(self.proc, sig)
        self._log.close()
        return self.proc.returncode


def run_websockify(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """A websockify run that is expected to end by itself (a wrong command line, a
    start-up failure, a daemon's parent): its exit status and captured output."""
    return subprocess.run([sys.executable, "-m", "websockify", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextmanager
def websockify(tmp_path: Path, *args: str, **kwargs) -> Iterator[Websockify]:
    """Run websockify with ``args`` for the duration of a with-block."""
    server = Websockify(list(args), tmp_path / f"websockify-{time.monotonic_ns()}.log", **kwargs)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# The one raw-socket RFC 6455 client of the suite, written independently of the
# server's codec so that the tests check the server against the RFC, not against
# itself: requests and frames are built byte by byte, responses read the same way.

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


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


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def send_close(sock: socket.socket, code: int = 1000, reason: bytes = b"") -> None:
    sock.sendall(client_frame(OP_CLOSE, close_payload(code, reason)))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def parse_server_frame(take: Callable[[int], bytes]) -> tuple[int, bool, bytes]:
    """One server frame read through ``take(n)``: (opcode, fin, payload).

    Asserts the server did not mask it (RFC 6455 5.1)."""
    first, second = take(2)
    assert second & 0x80 == 0, "server frames must not be masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", take(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", take(8))
    return first & 0x0F, bool(first & 0x80), take(length)


def read_server_frame(sock: socket.socket) -> tuple[int, bool, bytes]:
    """One server frame read straight off ``sock`` (nothing buffered past it)."""
    return parse_server_frame(lambda n: recv_exact(sock, n))


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
        """One frame: (opcode, fin, payload)."""
        return parse_server_frame(self._take)

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
                return CloseResult(close_code(payload), payload[2:], bytes(data), pings)
            if opcode == OP_PING:
                pings.append(payload)
            elif opcode in (OP_CONT, OP_TEXT, OP_BINARY):
                data += payload


def expect_close(sock: socket.socket) -> CloseResult:
    return FrameReader(sock).expect_close()


def read_http_head(sock: socket.socket) -> bytes:
    """Read an HTTP response head up to and including the blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


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


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def upgrade_request(protocols: str | None = "binary", version: str = "13", path: str = "/",
                    host: str | None = "localhost", key: str | None = None,
                    http_version: str = "HTTP/1.1", extra: str = "") -> bytes:
    """An RFC 6455 upgrade request; ``host=None`` leaves the Host header out and
    ``extra`` holds further header lines, each ending in CRLF."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} {http_version}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             f"Sec-WebSocket-Version: {version}"]
    if host is not None:
        lines.insert(1, f"Host: {host}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def upgrade(sock: socket.socket, protocols: str | None = "binary", version: str = "13",
            path: str = "/", host: str = "localhost", key: str | None = None,
            extra: str = "") -> bytes:
    """Send an RFC 6455 upgrade request on ``sock``; returns the response head."""
    sock.sendall(upgrade_request(protocols, version, path, host, key, extra=extra))
    return read_http_head(sock)


def open_websocket(port: int, protocols: str | None = "binary", path: str = "/",
                   version: str = "13", extra: str = "") -> tuple[socket.socket, bytes]:
    """Connect and send an RFC 6455 upgrade; returns the socket and the response head
    (whatever its status: the caller asserts it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock, upgrade(sock, protocols, version, path, f"127.0.0.1:{port}", extra=extra)


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
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    body += chunk
        return http_status(head), head, bytes(body)


def read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the server sends until it hangs up (EOF or reset); fails if it keeps
    the connection open for ``timeout`` s."""
    sock.settimeout(timeout)
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError as error:
        raise AssertionError(f"server kept the TCP connection open for {timeout}s") from error
    return bytes(received)


def assert_tcp_closed(sock: socket.socket, timeout: float = TIMEOUT) -> None:
    """The server hangs up (EOF or reset) within ``timeout`` and sends nothing more."""
    extra = read_until_closed(sock, timeout)
    assert not extra, f"server sent {len(extra)} bytes after its Close frame: {bytes(extra[:40])!r}"
