"""target.connect: literal addresses skip the resolver, names still resolve, errors say why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import TIMEOUT, TcpServer, echo, recv_exact
from websockify import target
from websockify.errors import TargetError
from websockify.settings import TcpAddress, UnixAddress


@pytest.fixture
def v4_echo() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


def round_trip(sock: socket.socket) -> None:
    """The connection reaches the echo server and carries bytes both ways."""
    try:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
    finally:
        sock.close()


@pytest.mark.parametrize(("host", "family"), [
    ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6), ("::ffff:127.0.0.1", socket.AF_INET6),
    ("localhost", None), ("fe80::1%lo", None), ("1.2.3", None), ("", None),
])
def test_only_literal_addresses_skip_the_resolver(host: str, family: int | None) -> None:
    assert target._literal_family(host) == family


def test_a_literal_ipv4_target_is_reached_with_nodelay(v4_echo: TcpServer) -> None:
    sock = target.connect(TcpAddress("127.0.0.1", v4_echo.port), TIMEOUT)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.gettimeout() is None
    round_trip(sock)


def test_a_literal_ipv6_target_is_reached() -> None:
    server = TcpServer(echo, family=socket.AF_INET6, host="::1")
    try:
        sock = target.connect(TcpAddress("::1", server.port), TIMEOUT)
        assert sock.family == socket.AF_INET6
        round_trip(sock)
    finally:
        server.close()


def test_a_name_is_still_resolved(v4_echo: TcpServer) -> None:
    # localhost may resolve to ::1 first, where nothing listens: every address is tried.
    round_trip(target.connect(TcpAddress("localhost", v4_echo.port), TIMEOUT))


def test_a_refused_literal_target_is_a_target_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(TargetError, match=r"cannot reach target 127\.0\.0\.1:\d+: .*refused"):
            target.connect(TcpAddress("127.0.0.1", port), TIMEOUT)


def test_a_unix_target_is_reached(tmp_path: Path) -> None:
    path = tmp_path / "target.sock"
    server = TcpServer(echo, unix_path=path)
    try:
        round_trip(target.connect(UnixAddress(str(path)), TIMEOUT))
    finally:
        server.close()


def test_a_missing_unix_target_is_a_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"cannot reach target unix:.*No such file"):
        target.connect(UnixAddress(str(tmp_path / "absent.sock")), TIMEOUT)
