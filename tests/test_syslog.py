"""--syslog: RFC 5424 and upstream's legacy form, received by real UDP and unix sockets."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import TIMEOUT, run_websockify, wait_until, websockify
from websockify.errors import EXIT_STARTUP_FAILURE
from websockify.syslog import (
    LOG_USER,
    MAX_DATAGRAM,
    SyslogHandler,
    parse_address,
    rfc3164,
    rfc5424,
    severity,
)

# 2023-11-14T22:13:20Z
CREATED = 1_700_000_000.25


@contextmanager
def receiver(family: int, address: object) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def receive_until(sock: socket.socket, needle: bytes) -> bytes:
    """The first datagram containing ``needle`` (each recv is bounded by TIMEOUT)."""
    while True:
        datagram = sock.recv(65536)
        if needle in datagram:
            return datagram


# ---------------------------------------------------------------------------
# The formats, byte for byte

def test_rfc5424_message() -> None:
    assert rfc5424(14, CREATED, "host.example", 42, "listening on 127.0.0.1:6080") == (
        b"<14>1 2023-11-14T22:13:20.250000Z host.example websockify 42 - - "
        b"listening on 127.0.0.1:6080")


def test_rfc5424_marks_utf8_with_a_bom_and_cleans_the_hostname() -> None:
    datagram = rfc5424(11, CREATED, "bad host\n", 7, "client «x» left")
    assert datagram == ("<11>1 2023-11-14T22:13:20.250000Z badhost websockify 7 - - "
                        "\ufeffclient «x» left").encode()
    assert rfc5424(11, CREATED, "", 7, "m").split(b" ")[2] == b"-", "no hostname: nil value"


def test_rfc3164_message_is_upstreams_legacy_form() -> None:
    assert rfc3164(30, 42, "listening") == b"<30>websockify[42]: listening"


def test_long_messages_are_cut_on_a_character_boundary() -> None:
    datagram = rfc3164(14, 1, "é" * MAX_DATAGRAM)
    assert len(datagram) <= MAX_DATAGRAM
    datagram.decode("utf-8")  # still valid UTF-8


@pytest.mark.parametrize("level, expected", [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7), (logging.INFO + 1, 6),
])
def test_severity(level: int, expected: int) -> None:
    assert severity(level) == expected


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:514", ("127.0.0.1", 514)),
    ("[::1]:1514", ("::1", 1514)),
    ("logs.example:514", ("logs.example", 514)),
    ("/dev/log", "/dev/log"),
])
def test_parse_address(text: str, address: object) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["host:", ":514", "host:port", "host:70000"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# ---------------------------------------------------------------------------
# The handler on real sockets

def test_lost_datagrams_are_counted_and_reported_when_the_receiver_returns(
        tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    record = logging.makeLogRecord({"msg": "first", "levelno": logging.INFO})
    with receiver(socket.AF_UNIX, path):
        handler = SyslogHandler(path, facility=LOG_USER, legacy=True)
    os.unlink(path)  # syslogd gone (restarting)
    try:
        handler.emit(record)
        handler.emit(record)
        assert handler.dropped == 2
        with receiver(socket.AF_UNIX, path) as sock:  # back, at the same path
            handler.emit(logging.makeLogRecord({"msg": "second", "levelno": logging.INFO}))
            assert sock.recv(4096) == (f"<12>websockify[{os.getpid()}]: 2 syslog messages "
                                       "were lost (the receiver was full or absent)").encode()
            assert sock.recv(4096) == f"<14>websockify[{os.getpid()}]: second".encode()
        assert handler.dropped == 0
    finally:
        handler.close()


# ---------------------------------------------------------------------------
# The whole server

def test_rfc5424_over_udp(tmp_path: Path) -> None:
    with receiver(socket.AF_INET, ("127.0.0.1", 0)) as sock, websockify(
            tmp_path, "--syslog", f"127.0.0.1:{sock.getsockname()[1]}", "127.0.0.1:0",
            "127.0.0.1:1") as server:
        datagram = receive_until(sock, b"listening on")
    pattern = (rb"<14>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (\S+) websockify (\d+) - - "
               rb"listening on 127\.0\.0\.1:(\d+)")
    match = re.fullmatch(pattern, datagram)
    assert match, datagram
    assert match.group(1) == socket.gethostname().encode()
    assert int(match.group(2)) == server.proc.pid
    assert int(match.group(3)) == server.port


def test_legacy_syslog_over_a_unix_datagram_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with receiver(socket.AF_UNIX, path) as sock, websockify(
            tmp_path, "--syslog", path, "--legacy-syslog", "127.0.0.1:0",
            "127.0.0.1:1") as server:
        datagram = receive_until(sock, b"listening on")
        assert datagram == f"<14>websockify[{server.proc.pid}]: listening on " \
                           f"127.0.0.1:{server.port}".encode()
        server.stop()
        assert receive_until(sock, b"SIGTERM") == (
            f"<14>websockify[{server.proc.pid}]: SIGTERM received, shutting down".encode())


def test_a_daemon_logs_with_the_daemon_facility(tmp_path: Path) -> None:
    path, pid_file = str(tmp_path / "log.sock"), tmp_path / "pid"
    with receiver(socket.AF_UNIX, path) as sock:
        done = run_websockify("-D", "--pid-file", str(pid_file),
                              "--syslog", path, "127.0.0.1:0", "127.0.0.1:1")
        assert done.returncode == 0, done.stderr
        pid = int(pid_file.read_text())
        try:
            assert receive_until(sock, b"listening on").startswith(b"<30>1 ")  # daemon.info
        finally:
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_file.exists(), "the daemon to exit")


def test_a_syslog_socket_that_is_not_there_is_a_start_up_failure(tmp_path: Path) -> None:
    done = run_websockify("--syslog", str(tmp_path / "no-log"), "127.0.0.1:0", "127.0.0.1:1")
    assert done.returncode == EXIT_STARTUP_FAILURE
    assert done.stderr == f"websockify: error: --syslog {tmp_path / 'no-log'}: " \
                          "No such file or directory\n"


def test_a_receiver_that_stops_reading_never_blocks_the_server(tmp_path: Path) -> None:
    """Its queue fills, the rest is dropped and counted; then, once it reads again,
    the count arrives first."""
    path = str(tmp_path / "log.sock")
    with receiver(socket.AF_UNIX, path) as sock:
        handler = SyslogHandler(path, legacy=True)
        try:
            record = logging.makeLogRecord({"msg": "x" * 1000, "levelno": logging.INFO})
            for _ in range(5000):  # far more than a datagram queue holds
                handler.emit(record)
            assert handler.dropped > 0
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(65536):
                    pass  # the receiver catches up
            lost = handler.dropped
            handler.emit(logging.makeLogRecord({"msg": "back", "levelno": logging.INFO}))
            sock.setblocking(True)
            sock.settimeout(TIMEOUT)
            assert f"]: {lost} syslog messages were lost".encode() in sock.recv(65536)
            assert sock.recv(65536).endswith(b"]: back")
        finally:
            handler.close()
