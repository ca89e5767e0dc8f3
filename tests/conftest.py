"""Shared fixtures: real TCP targets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import TcpServer, echo


@pytest.fixture
def echo_target() -> Iterator[TcpServer]:
    """A TCP echo server on 127.0.0.1 (a real socket, one thread per connection)."""
    server = TcpServer(echo)
    yield server
    server.close()
