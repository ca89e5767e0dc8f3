"""``-D/--daemon`` with ``--pid-file``: a real detached websockify, stopped by its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_support import RecordingTarget, echo_roundtrip
from tests.support import REPO, TIMEOUT, run_websockify, wait_until
from websockify.errors import EXIT_STARTUP_FAILURE


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    server = RecordingTarget(echo=True)
    yield server
    server.close()



def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for an init that does not reap is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, tty_nr …"""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def test_daemon_detaches_writes_its_pid_and_stops_on_sigterm(
        tmp_path: Path, target: RecordingTarget) -> None:
    pid_file, port_file, log_file = tmp_path / "pid", tmp_path / "port", tmp_path / "log"
    done = run_websockify("-D", "--pid-file", str(pid_file), "--port-file", str(port_file),
                          "--log-file", str(log_file), "127.0.0.1:0",
                          f"127.0.0.1:{target.port}")
    # The command returns once the daemon listens: the files are there already.
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    port = int(port_file.read_text())
    try:
        assert f"websockify: ready on 127.0.0.1:{port} (daemon pid {pid})" in done.stderr
        assert pid != os.getpid() and alive(pid)
        _, parent, _, session, tty = stat_fields(pid)[:5]
        assert int(parent) != os.getpid(), "the daemon is not a child of who started it"
        assert int(session) not in (os.getsid(0), pid), "a session of its own, not its leader"
        assert tty == "0", "no controlling terminal"
        assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null", "stderr let go once ready"
        echo_roundtrip(port)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), "the daemon to exit on SIGTERM")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not pid_file.exists() and not port_file.exists(), "removed at exit"
    assert "SIGTERM received, shutting down" in log_file.read_text()


def test_daemon_that_cannot_listen_fails_the_command(tmp_path: Path) -> None:
    """The error reaches the terminal and the exit status, as in the foreground."""
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        done = run_websockify("-D", "--pid-file", str(tmp_path / "pid"),
                              f"127.0.0.1:{busy.getsockname()[1]}", "127.0.0.1:1")
    finally:
        busy.close()
    assert done.returncode == EXIT_STARTUP_FAILURE, done.stderr
    assert "Address already in use" in done.stderr
    assert not (tmp_path / "pid").exists()


def test_a_wrapped_program_of_a_daemon_does_not_hold_the_terminal(tmp_path: Path) -> None:
    """The command returns once ready although the wrapped program keeps running: it
    never got the caller's stdout/stderr (a CI job's pipe would wait for it)."""
    pid_file = tmp_path / "pid"
    done = run_websockify("-D", "--pid-file", str(pid_file), "127.0.0.1:0", "--",
                          "sleep", "600")
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        wait_until(lambda: children.read_text().split(), "the wrapped program")
        program = int(children.read_text().split()[0])
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{program}/fd/{fd}") == "/dev/null"
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid) and not alive(program),
                   "the daemon and its program to stop")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_daemon_started_with_stdio_closed(tmp_path: Path) -> None:
    """cron and some init systems close 0, 1 and 2: the status pipe must not land there."""
    pid_file = tmp_path / "pid"
    done = subprocess.run(
        ["bash", "-c", 'exec 0<&- 1>&- 2>&-; exec "$@"', "bash", sys.executable, "-m",
         "websockify", "-D", "--pid-file", str(pid_file), "127.0.0.1:0", "127.0.0.1:1"],
        cwd=REPO, timeout=TIMEOUT)
    assert done.returncode == 0
    pid = int(pid_file.read_text())
    try:
        assert alive(pid)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), "the daemon to exit on SIGTERM")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not pid_file.exists()
