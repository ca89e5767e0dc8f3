"""End to end: upstream's Python API (WebSocketProxy, ProxyRequestHandler) serving real clients.

The proxy runs in a multiprocessing.Process under each start method, as a program
importing websockify would run it; clients are python-websockets and raw sockets,
targets are real TCP (plain and TLS) echo servers on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.bridge_support import FloodTarget, recv_bytes, ws_connect, ws_unix_connect
from tests.library_support import child_pids, library_proxy
from tests.support import (
    OP_BINARY,
    OP_PING,
    TIMEOUT,
    FrameReader,
    TcpServer,
    client_frame,
    echo,
    open_websocket,
    send_close,
    upgrade,
    wait_until,
)
from tests.tls_support import self_signed
from websockify.websocketproxy import ProxyRequestHandler, WebSocketProxy

START_METHODS = ["fork", "spawn", "forkserver"]


# -- handlers as importing programs write them (module level: spawn imports them) --------

class TokenHandler(ProxyRequestHandler):
    """nova's pattern: the token in the query string picks the target; self.socket opens it."""

    def new_websocket_client(self) -> None:
        token = parse_qs(urlparse(self.path).query).get("token", [""])[0]
        targets = self.server.targets  # an attribute the program added to the server
        if token not in targets:
            raise LookupError(f"unknown token {token!r}")
        # Per-connection state on the shared server stays in this connection's process.
        self.server.targets = {}
        host, port = targets[token]
        self.msg("connecting to: %s:%s", host, port)
        tsock = self.socket(host, port, connect=True)
        try:
            self.do_proxy(tsock)
        finally:
            tsock.close()


class TlsTargetHandler(ProxyRequestHandler):
    """Wraps the target in TLS itself and hands the ssl.SSLSocket to do_proxy."""

    def new_websocket_client(self) -> None:
        context = ssl.create_default_context(cafile=self.server.target_ca)
        raw = self.socket(self.server.target_host, self.server.target_port, connect=True)
        tsock = context.wrap_socket(raw, server_hostname="localhost")
        try:
            self.do_proxy(tsock)
        finally:
            tsock.close()


class SmallSendBufferHandler(ProxyRequestHandler):
    """Shrinks both send buffers, so frames and target writes often go out in pieces."""

    def new_websocket_client(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().new_websocket_client()

    def do_proxy(self, target: socket.socket) -> None:
        target.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().do_proxy(target)


class TlsTargetProxy(WebSocketProxy):
    """Carries the target's certificate authority for TlsTargetHandler."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.target_ca = kwargs.pop("target_ca")
        super().__init__(*args, **kwargs)


class TokenProxy(WebSocketProxy):
    """A subclass popping its own keyword, as nova's NovaWebSocketProxy does."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.targets = kwargs.pop("targets")
        super().__init__(*args, **kwargs)


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "localhost")


@pytest.fixture
def tls_echo_target(certificate: tuple[Path, Path]) -> Iterator[TcpServer]:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def serve(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            echo(tls)  # type: ignore[arg-type]

    server = TcpServer(serve)
    yield server
    server.close()


def _accepts(path: Path) -> bool:
    """True once a unix socket listens (the file exists a moment before it does)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _transfer(port: int, size: int, path: str = "/") -> None:
    """Upload ``size`` random bytes in 64 KiB messages and read the same bytes back."""
    payload = os.urandom(size)
    with ws_connect(port, path=path) as ws:
        for start in range(0, size, 65536):
            ws.send(payload[start:start + 65536])
        received = recv_bytes(ws, size)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", START_METHODS)
def test_proxy_in_a_process_of_each_start_method(method: str, echo_target: TcpServer) -> None:
    with library_proxy(method, target_host="127.0.0.1", target_port=echo_target.port) as proxy:
        clients = [threading.Thread(target=_transfer, args=(proxy.port, 1 << 20))
                   for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(TIMEOUT)
        assert not any(client.is_alive() for client in clients)
        _transfer(proxy.port, 1 << 20)  # raises if any byte differs
        exit_code = proxy.stop()
    assert exit_code == 0


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_the_proxy_object_itself_as_process_target(method: str, tmp_path: Path,
                                                   echo_target: TcpServer) -> None:
    """multiprocessing pickles the WebSocketProxy for these start methods: it must allow it."""
    import multiprocessing

    listen = tmp_path / "ws.sock"
    proxy = WebSocketProxy(unix_listen=str(listen), target_host="127.0.0.1",
                           target_port=echo_target.port)
    process = multiprocessing.get_context(method).Process(target=proxy.start_server)
    process.start()
    try:
        wait_until(lambda: _accepts(listen), "the proxy's unix socket to accept")
        with ws_unix_connect(listen) as ws:
            ws.send(b"through a pickled proxy")
            assert recv_bytes(ws, 23) == b"through a pickled proxy"
    finally:
        process.terminate()
        process.join(TIMEOUT)
    assert process.exitcode == 0


def test_shutdown_closes_clients_with_1001_and_reaps_children(echo_target: TcpServer) -> None:
    with library_proxy("fork", target_host="127.0.0.1", target_port=echo_target.port) as proxy, \
            ws_connect(proxy.port) as ws:
        ws.send(b"hello")
        assert recv_bytes(ws, 5) == b"hello"
        assert len(child_pids(proxy.process.pid)) == 1  # one process for the one client
        assert proxy.stop() == 0
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_nova_style_subclass_token_and_self_socket(echo_target: TcpServer) -> None:
    targets = {"secret": ("127.0.0.1", echo_target.port)}
    with library_proxy("fork", "tests.test_library_proxy:TokenHandler",
                       "tests.test_library_proxy:TokenProxy", targets=targets) as proxy:
        _transfer(proxy.port, 256 * 1024, path="/?token=secret")
        # The first connection emptied self.server.targets in its own process only.
        _transfer(proxy.port, 1024, path="/?token=secret")
        with ws_connect(proxy.port, path="/?token=wrong") as ws, \
                pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        _transfer(proxy.port, 10, path="/?token=secret")  # still serving


def test_tls_target_as_an_sslsocket(tls_echo_target: TcpServer,
                                    certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    with library_proxy("fork", "tests.test_library_proxy:TlsTargetHandler",
                       "tests.test_library_proxy:TlsTargetProxy", target_ca=str(cert),
                       target_host="127.0.0.1", target_port=tls_echo_target.port) as proxy:
        _transfer(proxy.port, 2 << 20)


def test_wss_clients_and_heartbeat(echo_target: TcpServer,
                                   certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with library_proxy("fork", target_host="127.0.0.1", target_port=echo_target.port,
                       cert=str(cert), key=str(key), heartbeat=1) as proxy:
        context = ssl.create_default_context(cafile=str(cert))
        with connect(f"wss://localhost:{proxy.port}/", ssl=context, open_timeout=TIMEOUT,
                     subprotocols=[Subprotocol("binary")], max_size=None,
                     ping_interval=None) as ws:
            payload = os.urandom(300_000)
            ws.send(payload)
            assert recv_bytes(ws, len(payload)) == payload
        sock, head = open_websocket(proxy.port)
        with sock:
            assert head.startswith(b"HTTP/1.1 101")
            reader = FrameReader(sock)
            assert reader.read_frame()[0] == OP_PING
            sock.sendall(client_frame(OP_BINARY, b"after a ping"))
            opcode, _, data = reader.read_frame()
            while opcode == OP_PING:
                opcode, _, data = reader.read_frame()
            assert (opcode, data) == (OP_BINARY, b"after a ping")
            send_close(sock)


@pytest.mark.parametrize("mode", ["eventlet", "threads"])
def test_program_timers_run_while_relaying(mode: str, echo_target: TcpServer,
                                           tmp_path: Path) -> None:
    """nova's session timeout: a threading.Timer shuts the target while do_proxy waits.

    Under eventlet's monkey-patching the relay's wait must be green for the timer to
    fire at all; with plain threads the wait must notice the target's end.
    """
    log_path = tmp_path / "proxy.log"
    program = Path(__file__).parent / "programs" / "session_timeout_proxy.py"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(program), mode, str(echo_target.port),
                                    "0.5"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"PORT " in log_path.read_bytes() or process.poll() is not None,
                   "the proxy's port")
        port = int(log_path.read_bytes().split(b"PORT ", 1)[1].split()[0])
        with ws_connect(port) as ws:
            ws.send(b"before the timer")
            assert recv_bytes(ws, 16) == b"before the timer"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    assert process.returncode == 0, log_path.read_text()
    if mode == "threads":
        assert "eventlet" not in log_path.read_text()


def test_download_to_a_slow_reader_is_exact() -> None:
    """Tiny socket buffers on both sides: the relay keeps hitting a full socket."""
    size = 8 << 20
    target = FloodTarget([size], block=os.urandom(1 << 20))
    try:
        with library_proxy("fork", "tests.test_library_proxy:SmallSendBufferHandler",
                           target_host="127.0.0.1", target_port=target.port) as proxy:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(TIMEOUT)
            sock.connect(("127.0.0.1", proxy.port))
            with sock:
                assert upgrade(sock).startswith(b"HTTP/1.1 101")
                reader, digest, received = FrameReader(sock), hashlib.sha256(), 0
                while received < size:
                    opcode, _, payload = reader.read_frame()
                    assert opcode == OP_BINARY
                    digest.update(payload)
                    received += len(payload)
                assert received == size
                assert digest.hexdigest() == target.expected_sha256(0)
                assert reader.expect_close().code == 1000  # the target's end, after its bytes
    finally:
        target.close()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_both_ways_at_once_through_tiny_buffers_is_exact(
        scheme: str, echo_target: TcpServer, certificate: tuple[Path, Path]) -> None:
    """Upload and echo concurrently while every socket on the way is nearly full."""
    payload = os.urandom(6 << 20)
    cert, key = certificate
    tls = {"cert": str(cert), "key": str(key)} if scheme == "wss" else {}
    with library_proxy("fork", "tests.test_library_proxy:SmallSendBufferHandler",
                       target_host="127.0.0.1", target_port=echo_target.port, **tls) as proxy, \
            connect(f"{scheme}://localhost:{proxy.port}/", open_timeout=TIMEOUT,
                    ssl=ssl.create_default_context(cafile=str(cert)) if tls else None,
                    subprotocols=[Subprotocol("binary")], max_size=None,
                    ping_interval=None) as ws:
        def upload() -> None:
            for start in range(0, len(payload), 65536):
                ws.send(payload[start:start + 65536])

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        received = recv_bytes(ws, len(payload), timeout=4 * TIMEOUT)
        sender.join(TIMEOUT)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_ssl_options_set_the_minimum_tls_version(echo_target: TcpServer,
                                                  certificate: tuple[Path, Path]) -> None:
    """nova passes select_ssl_version(...) as ssl_options: it must keep older TLS out."""
    from websockify.websocketproxy import select_ssl_version

    cert, key = certificate
    with library_proxy("fork", target_host="127.0.0.1", target_port=echo_target.port,
                       cert=str(cert), key=str(key),
                       ssl_options=select_ssl_version("tlsv1_3")) as proxy:
        old_client = ssl.create_default_context(cafile=str(cert))
        old_client.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as raw, \
                pytest.raises(ssl.SSLError):
            old_client.wrap_socket(raw, server_hostname="localhost")
        with connect(f"wss://localhost:{proxy.port}/", open_timeout=TIMEOUT,
                     ssl=ssl.create_default_context(cafile=str(cert)),
                     subprotocols=[Subprotocol("binary")], ping_interval=None) as ws:
            ws.send(b"TLS 1.3 only")
            assert recv_bytes(ws, 12) == b"TLS 1.3 only"
