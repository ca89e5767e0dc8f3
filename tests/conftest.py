"""Shared fixtures: real TCP targets on 127.0.0.1 and the rebind.so shim."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_support import build_rebind
from tests.support import TcpServer, echo


@pytest.fixture
def echo_target() -> Iterator[TcpServer]:
    """A TCP echo server on 127.0.0.1 (a real socket, one thread per connection)."""
    server = TcpServer(echo)
    yield server
    server.close()


@pytest.fixture(scope="session")
def rebind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rebind/rebind.c compiled once for the whole run, as the Makefile builds it."""
    return build_rebind(tmp_path_factory.mktemp("rebind"))
