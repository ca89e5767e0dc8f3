"""systemd's protocols: socket activation and sd_notify, against real sockets.

Two launchers pass the listening socket the way systemd does: Debian's
``systemd-socket-activate`` (a unix socket; it starts websockify on the first
connection, as a socket unit with ``Accept=no`` does), and a few lines of bash
here (a TCP socket on port 0).  sd_notify messages are received on a real unix
datagram socket, named by path and in the abstract namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.bridge_support import (
    RecordingTarget,
    echo_roundtrip,
    recv_bytes,
    wait_exit,
    ws_unix_connect,
)
from tests.support import REPO, TIMEOUT, Websockify, wait_until, websockify
from websockify.systemd import Notifier, listen_fds


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    server = RecordingTarget(echo=True)
    yield server
    server.close()


@contextmanager
def notify_socket(path: str) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


# ---------------------------------------------------------------------------
# listen_fds() on its own: the variables' rules

@pytest.mark.parametrize("env", [
    {},
    {"LISTEN_PID": "1", "LISTEN_FDS": "1"},           # meant for another process
    {"LISTEN_PID": "4242", "LISTEN_FDS": "0"},
    {"LISTEN_PID": "4242", "LISTEN_FDS": "one"},      # malformed: ignored, not a crash
    {"LISTEN_FDS": "1"},                              # no LISTEN_PID: not ours
])
def test_listen_fds_ignores_sockets_not_for_us(env: dict[str, str]) -> None:
    """(Sockets that are ours are taken in the tests with real launchers below.)"""
    env = {**env, "KEEP": "1"}
    assert listen_fds(env, pid=4242) == []
    assert env == {"KEEP": "1"}, "the activation variables are not left for children"


# ---------------------------------------------------------------------------
# Notifier on a real datagram socket

def test_notifier_reaches_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path) as receiver:
        env = {"NOTIFY_SOCKET": path}
        notifier = Notifier.from_environment(env)
        assert env == {}, "NOTIFY_SOCKET is taken, so a wrapped program cannot use it"
        assert notifier.ready("listening on\nsomewhere")
        assert fields(receiver.recv(4096)) == {"READY": "1", "STATUS": "listening on somewhere"}
        assert notifier.stopping()
        assert fields(receiver.recv(4096)) == {"STOPPING": "1"}


def test_notifier_reaches_an_abstract_socket(tmp_path: Path) -> None:
    name = f"websockify-test-{os.getpid()}-{tmp_path.name}"
    with notify_socket("\0" + name) as receiver:
        assert Notifier(f"@{name}").status("busy")
        assert fields(receiver.recv(4096)) == {"STATUS": "busy"}


def test_notifier_without_a_manager_does_nothing(tmp_path: Path) -> None:
    assert not Notifier(None).ready()
    assert not Notifier("vsock:2:1234").ready()
    assert not Notifier(str(tmp_path / "nobody-listens")).ready(), "no receiver: reported"


# ---------------------------------------------------------------------------
# The whole server, started by systemd-socket-activate

@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (package systemd) is not installed")
def test_systemd_socket_activate_starts_websockify_and_gets_ready_and_stopping(
        tmp_path: Path, target: RecordingTarget) -> None:
    """The first client's connection starts websockify on the passed socket; the client
    is served, systemd hears READY=1 then STOPPING=1, SIGTERM exits 0."""
    listen_path = str(tmp_path / "ws.sock")
    notify_path = str(tmp_path / "notify")
    log_path = tmp_path / "activate.log"
    with notify_socket(notify_path) as receiver, open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", listen_path, "--fdname=websockify",
             "-E", f"NOTIFY_SOCKET={notify_path}", "-E", "PYTHONUNBUFFERED=1",
             sys.executable, "-m", "websockify", "--socket-activation",
             f"127.0.0.1:{target.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            wait_until(lambda: "Listening on" in log_path.read_text(), "the socket to listen")
            with ws_unix_connect(Path(listen_path)) as ws:
                ws.send(b"through the activated socket")
                assert recv_bytes(ws, 28) == b"through the activated socket"
            ready = fields(receiver.recv(4096))
            assert ready["READY"] == "1"
            assert ready["STATUS"] == f"listening on unix:{listen_path}"
            proc.send_signal(signal.SIGTERM)
            assert fields(receiver.recv(4096))["STOPPING"] == "1"
            assert wait_exit(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    assert f"ready on unix:{listen_path}" in log_path.read_text()


# ---------------------------------------------------------------------------
# The whole server, with a TCP socket passed by a launcher written here

WEBSOCKIFY = [sys.executable, "-m", "websockify"]
# bash, because dash cannot name descriptors above 9: move the sockets to fds 3, 4 …,
# set LISTEN_PID to the pid that exec keeps, and exec websockify.
LAUNCHER = """
next=3
for fd in $SOCKET_FDS; do
    if [ "$fd" != "$next" ]; then eval "exec $next<&$fd $fd<&-"; fi
    next=$((next + 1))
done
LISTEN_PID=$$ exec "$@"
"""


@contextmanager
def activated(tmp_path: Path, sockets: list[socket.socket], *args: str, names: str = "",
              wait_listening: bool = True) -> Iterator[Websockify]:
    """websockify started by LAUNCHER with ``sockets``; the test's copies are closed once
    it runs, and the server is stopped at the end of the with-block, whatever happens."""
    fds = tuple(sock.fileno() for sock in sockets)
    assert min(fds) >= 3 + len(fds), "the test's sockets would be overwritten by the move"
    env = {"SOCKET_FDS": " ".join(map(str, fds)), "LISTEN_FDS": str(len(fds))}
    if names:
        env["LISTEN_FDNAMES"] = names
    server = Websockify(["--socket-activation", *args], tmp_path / "activated.log", env=env,
                        program=["bash", "-c", LAUNCHER, "launcher", *WEBSOCKIFY], pass_fds=fds,
                        wait_listening=wait_listening)
    for sock in sockets:
        sock.close()
    try:
        yield server
    finally:
        server.stop()


def test_a_passed_tcp_socket_is_served(tmp_path: Path, target: RecordingTarget) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    with activated(tmp_path, [listening], "--port-file", str(tmp_path / "port"),
                   f"127.0.0.1:{target.port}") as server:
        assert server.port == port, "the log names the passed socket's port"
        assert (tmp_path / "port").read_text() == f"{port}\n"
        echo_roundtrip(port)
    assert server.proc.returncode == 0


def test_several_passed_sockets_are_refused_with_their_names(tmp_path: Path) -> None:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    with activated(tmp_path, sockets, "127.0.0.1:1", names="one:two",
                   wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
    assert "2 sockets were passed (one, two)" in server.log()


def test_socket_activation_without_a_socket_is_a_clear_error(tmp_path: Path) -> None:
    with websockify(tmp_path, "--socket-activation", "127.0.0.1:1",
                    wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
    assert "--socket-activation: no socket was passed" in server.log()
    assert "Traceback" not in server.log()


def test_a_connection_instead_of_a_listener_is_refused(tmp_path: Path) -> None:
    """A socket unit with Accept=yes passes one connection, not the listener."""
    listening = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listening.getsockname())
    connection, _ = listening.accept()
    with activated(tmp_path, [connection], "127.0.0.1:1", wait_listening=False) as server:
        listening.close()
        client.close()
        assert wait_exit(server.proc) == 2
    assert "is not a listening socket (the socket unit needs Accept=no)" in server.log()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (package systemd) is not installed")
def test_the_sample_units_pass_systemd_analyze(tmp_path: Path) -> None:
    """contrib/systemd's template units, instantiated, with no warning at all."""
    units = []
    for suffix in ("socket", "service"):
        unit = tmp_path / f"websockify@6080.{suffix}"
        unit.write_text((REPO / "contrib" / "systemd" / f"websockify@.{suffix}").read_text())
        units.append(str(unit))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
    service = Path(units[1]).read_text()
    assert "Type=notify" in service and "--socket-activation" in service


def test_a_manager_that_does_not_read_never_blocks_the_notifier(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path):
        notifier = Notifier(path)
        results = [notifier.status(f"busy {n}") for n in range(5000)]
    assert results[0] and not results[-1], "the queue filled up; later ones were dropped"
