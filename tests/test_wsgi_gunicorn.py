"""websockify.wsgi:application deployed under a real gunicorn, with both workers.

- Our worker (websockify.gunicorn_worker.WebsockifyWorker) keeps our handshake: binary,
  base64 and Hixie clients, and our strictness.
- gevent-websocket's stock worker answers the RFC 6455 handshake itself; the
  application adopts the connection and relays it with our codec.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.support import (
    REPO,
    TIMEOUT,
    TcpServer,
    client_frame,
    close_code,
    open_websocket,
    read_http_head,
    read_server_frame,
    recv_exact,
    stop_process,
    websockify,
)

GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
OUR_WORKER = "websockify.gunicorn_worker.WebsockifyWorker"
STOCK_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
LISTENING = re.compile(r"Listening at: https?://127\.0\.0\.1:(\d+)")


class Gunicorn:
    """gunicorn serving websockify.wsgi:application, configured by WEBSOCKIFY_ARGS."""

    def __init__(self, tmp_path: Path, worker: str, args: str,
                 extra: tuple[str, ...] = (),
                 app: str = "websockify.wsgi:application") -> None:
        self.log_path = tmp_path / f"gunicorn-{time.monotonic_ns()}.log"
        env = dict(os.environ, WEBSOCKIFY_ARGS=args)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(GUNICORN), "-k", worker, "-b", "127.0.0.1:0", "--workers", "1",
                 "--control-socket", str(tmp_path / "gunicorn.ctl"), *extra,
                 app],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = LISTENING.search(self.log())
            if match and "Booting worker" in self.log():
                self.port = int(match.group(1))
                return self.port
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not start:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)


@contextmanager
def gunicorn(tmp_path: Path, worker: str, args: str,
             extra: tuple[str, ...] = (),
             app: str = "websockify.wsgi:application") -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path, worker, args, extra, app)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


def echo_binary(port: int) -> None:
    """python-websockets, subprotocol binary: small, empty and 1 MiB messages echo intact."""
    with connect(f"ws://127.0.0.1:{port}/", subprotocols=[Subprotocol("binary")],
                 max_size=None, open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == "binary"
        for size in (1, 0, 70_000, 1 << 20):
            payload = os.urandom(size)
            ws.send(payload)
            received = b""
            while len(received) < size:
                received += ws.recv(timeout=TIMEOUT)
            assert received == payload


@pytest.mark.parametrize("worker", [OUR_WORKER, STOCK_WORKER])
def test_binary_clients_are_relayed_under_both_workers(
        tmp_path: Path, echo_target: TcpServer, worker: str) -> None:
    with gunicorn(tmp_path, worker, f"127.0.0.1:{echo_target.port}") as server:
        echo_binary(server.port)
        echo_binary(server.port)  # the worker keeps serving after a connection ends


def test_stock_worker_relays_frames_sent_with_the_handshake(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """Frames that gevent-websocket's reader buffered with the request are not lost."""
    with gunicorn(tmp_path, STOCK_WORKER, f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: binary\r\n\r\n").encode()
            + client_frame(0x2, b"early") + client_frame(0x2, b"-bird"))
        head = read_http_head(sock)
        assert head.startswith(b"HTTP/1.1 101"), head
        received = b""
        while len(received) < 10:
            opcode, _, payload = read_server_frame(sock)
            assert opcode == 0x2
            received += payload
        assert received == b"early-bird"


def assert_base64_and_hixie_echo(port: int) -> None:
    """Our handshake answers: base64 (RFC 6455) and Hixie-75 clients are relayed."""
    sock, head = open_websocket(port, protocols="base64")
    with sock:
        assert b"Sec-WebSocket-Protocol: base64" in head, head
        sock.sendall(client_frame(0x1, base64.b64encode(b"\x00\xffbytes")))
        opcode, _, payload = read_server_frame(sock)
        assert (opcode, base64.b64decode(payload)) == (0x1, b"\x00\xffbytes")

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as hixie:
        hixie.sendall(b"GET /demo HTTP/1.1\r\nHost: example\r\nUpgrade: WebSocket\r\n"
                      b"Connection: Upgrade\r\nOrigin: http://example\r\n\r\n")
        head = read_http_head(hixie)
        assert head.startswith(b"HTTP/1.1 101 Web Socket Protocol Handshake"), head
        assert b"WebSocket-Location: ws://example/demo" in head
        hixie.sendall(b"\x00" + base64.b64encode(b"hixie") + b"\xff")
        answer = recv_exact(hixie, 2 + len(base64.b64encode(b"hixie")))
        assert answer == b"\x00" + base64.b64encode(b"hixie") + b"\xff"


def assert_message_limit_of_1000(port: int) -> None:
    """--max-message-size 1000 reached the handshake: 1001 bytes get 1009, 1000 pass."""
    sock, head = open_websocket(port)
    with sock:
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(client_frame(0x2, b"x" * 1001))
        opcode, _, payload = read_server_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1009)
    sock, head = open_websocket(port)
    with sock:  # the server goes on serving the next client
        sock.sendall(client_frame(0x2, b"y" * 1000))
        received = b""
        while len(received) < 1000:
            opcode, _, payload = read_server_frame(sock)
            assert opcode == 0x2
            received += payload
        assert received == b"y" * 1000


def assert_handshake_timeout_below(port: int, limit: float) -> None:
    """A client stalled in its request is dropped before ``limit`` s, which is below
    the default timeout: the configured one reached the handler."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(limit)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < limit


def test_our_worker_keeps_base64_and_hixie(tmp_path: Path, echo_target: TcpServer) -> None:
    with gunicorn(tmp_path, OUR_WORKER, f"127.0.0.1:{echo_target.port}") as server:
        assert_base64_and_hixie_echo(server.port)


def test_our_worker_applies_the_message_limit(tmp_path: Path, echo_target: TcpServer) -> None:
    """--max-message-size from WEBSOCKIFY_ARGS holds under gunicorn: 1009."""
    args = f"--max-message-size 1000 127.0.0.1:{echo_target.port}"
    with gunicorn(tmp_path, OUR_WORKER, args) as server:
        assert_message_limit_of_1000(server.port)


LIMITED_ARGS = ("--max-message-size", "1000", "--handshake-timeout", "1")


def test_middleware_around_the_app_under_our_worker(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """The application wrapped in WSGI middleware under gunicorn: the handler still
    gets WEBSOCKIFY_ARGS' settings (from the worker) and every draft is served."""
    args = " ".join((*LIMITED_ARGS, f"127.0.0.1:{echo_target.port}"))
    with gunicorn(tmp_path, OUR_WORKER, args,
                  app="tests.programs.wsgi_middleware:wrapped_application()") as server:
        assert_base64_and_hixie_echo(server.port)
        assert_message_limit_of_1000(server.port)
        assert_handshake_timeout_below(server.port, 5.0)
        assert "Traceback" not in server.log(), server.log()


def test_middleware_around_the_app_under_our_server(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """The same under websockify's own server class: settings come from the server."""
    with websockify(tmp_path, *LIMITED_ARGS, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}",
                    program=[sys.executable, "-m", "tests.programs.wsgi_middleware"]) as server:
        assert_base64_and_hixie_echo(server.port)
        assert_message_limit_of_1000(server.port)
        assert_handshake_timeout_below(server.port, 5.0)
        assert "Traceback" not in server.log(), server.log()


def test_middleware_cannot_switch_off_the_origin_check(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """Middleware hides the app's admit() from our handler: the check runs after the 101.

    A wrong Origin is then refused with Close 1008 instead of 403, never relayed.
    """
    with websockify(tmp_path, "--origin", "http://good.example", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}",
                    program=[sys.executable, "-m", "tests.programs.wsgi_middleware"]) as server:
        for origin, admitted in (("http://evil.example", False), ("http://good.example", True)):
            sock, head = open_websocket(server.port, extra=f"Origin: {origin}\r\n")
            with sock:
                assert head.startswith(b"HTTP/1.1 101"), head
                if admitted:
                    sock.sendall(client_frame(0x2, b"hello"))
                    assert read_server_frame(sock) == (0x2, True, b"hello")
                else:
                    opcode, _, payload = read_server_frame(sock)
                    assert (opcode, close_code(payload)) == (0x8, 1008)
        assert "origin 'http://evil.example' is not allowed" in server.log(), server.log()


def test_static_files_under_gunicorn(tmp_path: Path, echo_target: TcpServer) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<h1>noVNC here</h1>")
    with gunicorn(tmp_path, OUR_WORKER, f"--web {web} 127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert response.endswith(b"<h1>noVNC here</h1>")


@pytest.mark.parametrize(("args", "message"), [
    ("", "set WEBSOCKIFY_ARGS"),
    ("--run-once 127.0.0.1:9", "--run-once needs websockify's own server"),
    ("127.0.0.1:9 -- sleep 10", "a wrapped program (-- COMMAND) needs websockify's own server"),
])
def test_wrong_arguments_stop_the_worker_with_a_clear_error(
        tmp_path: Path, args: str, message: str) -> None:
    server = Gunicorn(tmp_path, OUR_WORKER, args)
    try:
        server.proc.wait(TIMEOUT)
    finally:
        server.stop()
    assert server.proc.returncode != 0
    assert message in server.log(), server.log()


@pytest.mark.parametrize("worker", [OUR_WORKER, STOCK_WORKER])
def test_unreachable_target_gets_close_1011_under_both_workers(
        tmp_path: Path, worker: str) -> None:
    """Nothing listens on the target port: the client reads Close 1011 with the reason."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with gunicorn(tmp_path, worker, f"--connect-timeout 2 127.0.0.1:{dead_port}") as server:
        sock, head = open_websocket(server.port)
        with sock:
            assert head.startswith(b"HTTP/1.1 101"), head
            opcode, _, payload = read_server_frame(sock)
            assert (opcode, close_code(payload)) == (0x8, 1011)
            assert b"cannot reach target" in payload
        again, head = open_websocket(server.port)  # the worker keeps serving
        with again:
            assert head.startswith(b"HTTP/1.1 101"), head
