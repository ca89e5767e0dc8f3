"""The library server against hostile and careless clients: every child ends, nothing leaks.

Each case is followed by a working connection, and by a check that the server's
process has no children left and holds the descriptors it held before.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.bridge_support import abort, echo_roundtrip, fd_count, ws_connect
from tests.library_support import LibraryProxy, child_pids, library_proxy
from tests.support import (
    TIMEOUT,
    TcpServer,
    echo,
    raw_request,
    read_http_head,
    read_until_closed,
    wait_until,
)


@pytest.fixture(scope="module")
def proxy() -> Iterator[LibraryProxy]:
    target = TcpServer(echo)
    with library_proxy("fork", target_host="127.0.0.1", target_port=target.port,
                       handshake_timeout=1) as server:
        echo_roundtrip(server.port)
        wait_until(lambda: not child_pids(server.process.pid), "the first child to end")
        yield server
    target.close()


def _settled(server: LibraryProxy) -> int:
    """Wait until every child is reaped; returns the server's descriptor count."""
    wait_until(lambda: not child_pids(server.process.pid), "every child to be reaped")
    return fd_count(server.process.pid)


def _connect(server: LibraryProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def silent(sock: socket.socket) -> None:
    """Connects and sends nothing."""


def half_request(sock: socket.socket) -> None:
    """Starts a request and never finishes it (slowloris)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: web")


def half_hixie_body(sock: socket.socket) -> None:
    """A Hixie-76 upgrade whose 8-byte body never comes."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n"
                 b"Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\nabc")


def tls_garbage(sock: socket.socket) -> None:
    """Looks like TLS on the first byte, then is not (the server has no certificate)."""
    sock.sendall(b"\x16\x03\x01" + os.urandom(200))


def huge_header(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")


def many_headers(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n")


def not_http(sock: socket.socket) -> None:
    sock.sendall(b"\x00\x01\x02 hello\r\n\r\n")


@pytest.mark.parametrize("behaviour", [silent, half_request, half_hixie_body, tls_garbage,
                                       huge_header, many_headers, not_http],
                         ids=lambda behaviour: behaviour.__name__)
def test_bad_client_is_dropped_and_the_server_stays_clean(proxy: LibraryProxy,
                                                          behaviour) -> None:
    descriptors = _settled(proxy)
    with _connect(proxy) as sock:
        behaviour(sock)
        answer = read_until_closed(sock)
    # Nothing, an HTTP 4xx answer, or (for a request line without a version, which
    # http.server takes for HTTP/0.9) the 400 page without a status line.
    assert not answer or re.match(rb"HTTP/1\.[01] 4\d\d ", answer) or (
        answer.startswith(b"<!DOCTYPE HTML>") and b"Error code: 400" in answer), answer[:200]
    echo_roundtrip(proxy.port)
    assert _settled(proxy) == descriptors


def test_clients_that_vanish_mid_relay(proxy: LibraryProxy) -> None:
    descriptors = _settled(proxy)
    for _ in range(5):
        sock = _connect(proxy)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert read_http_head(sock).startswith(b"HTTP/1.1 101")
        abort(sock)  # TCP reset while the relay runs
    echo_roundtrip(proxy.port)
    assert _settled(proxy) == descriptors


def test_connections_beyond_max_connections_get_503(echo_target: TcpServer) -> None:
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with library_proxy("fork", target_host="127.0.0.1", target_port=echo_target.port,
                       max_connections=2) as server:
        with ws_connect(server.port), ws_connect(server.port):
            wait_until(lambda: len(child_pids(server.process.pid)) == 2, "two children")
            status, _, body = raw_request(server.port, upgrade)
            assert (status, body) == (503, b"Too many connections, try later\n")
        _settled(server)
        echo_roundtrip(server.port)  # room again


def test_a_request_trickling_in_is_dropped_at_the_deadline(proxy: LibraryProxy) -> None:
    """Each byte comes well within the per-read timeout; the whole request never does."""
    descriptors = _settled(proxy)
    stop = threading.Event()
    with _connect(proxy) as sock:
        def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            assert read_until_closed(sock) == b""  # dropped: 1 s deadline, bounded wait
        finally:
            stop.set()
            sender.join(TIMEOUT)
    echo_roundtrip(proxy.port)
    assert _settled(proxy) == descriptors
