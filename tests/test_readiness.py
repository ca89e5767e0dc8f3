"""Start-up as CI jobs see it: --port-file, the readiness line, the exit statuses.

Real websockify subprocesses on 127.0.0.1 port 0; each test waits for the file or
the line it checks, never for a fixed time.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_support import RecordingTarget, echo_roundtrip, wait_exit
from tests.support import run_websockify, wait_until, websockify
from websockify import cli
from websockify.errors import EXIT_STARTUP_FAILURE, EXIT_USAGE, ConfigError
from websockify.readiness import write_atomically


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    server = RecordingTarget(echo=True)
    yield server
    server.close()



def test_port_file_holds_the_chosen_port_and_goes_at_exit(
        tmp_path: Path, target: RecordingTarget) -> None:
    port_file = tmp_path / "port"
    port_file.write_text("1\n")  # a stale file of an earlier run
    with websockify(tmp_path, "--port-file", str(port_file), "127.0.0.1:0",
                    f"127.0.0.1:{target.port}") as server:
        wait_until(port_file.exists, "the port file")
        assert port_file.read_text() == f"{server.port}\n"
        echo_roundtrip(server.port)
        assert list(tmp_path.glob(".port.*")) == [], "no temporary file is left behind"
    assert server.proc.returncode == 0
    assert not port_file.exists(), "the port file is removed at exit"


def test_port_file_of_a_unix_listener_holds_its_path(tmp_path: Path) -> None:
    port_file, listen = tmp_path / "port", tmp_path / "ws.sock"
    with websockify(tmp_path, "--unix-listen", str(listen), "--port-file", str(port_file),
                    "127.0.0.1:1", wait_listening=False) as server:
        server.wait_for_log("ready on unix:", "the readiness line")
        assert port_file.read_text() == f"{listen}\n"


def test_readiness_line_on_stderr_names_the_address(
        tmp_path: Path, target: RecordingTarget) -> None:
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
        server.wait_for_log(f"websockify: ready on 127.0.0.1:{server.port}\n",
                            "the readiness line")


def test_json_logs_keep_stderr_one_json_object_per_line(
        tmp_path: Path, target: RecordingTarget) -> None:
    with websockify(tmp_path, "--log-format", "json", "127.0.0.1:0",
                    f"127.0.0.1:{target.port}") as server:
        server.wait_for_log('"event": "ready"', "the readiness object")
    entries = [json.loads(line) for line in server.log().splitlines()]
    ready = next(entry for entry in entries if entry.get("event") == "ready")
    assert ready["address"] == f"127.0.0.1:{server.port}"
    logged = next(entry for entry in entries if entry.get("message", "").startswith("listening"))
    assert logged["level"] == "INFO" and logged["logger"] == "websockify.server"
    assert logged["time"].endswith("Z")


def test_port_in_use_exits_with_the_start_up_status() -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        done = run_websockify(f"127.0.0.1:{busy.getsockname()[1]}", "127.0.0.1:1")
    finally:
        busy.close()
    assert done.returncode == EXIT_STARTUP_FAILURE == 3
    assert "Address already in use" in done.stderr
    assert "Traceback" not in done.stderr and "ready on" not in done.stderr


def test_a_wrapped_program_that_cannot_start_is_a_start_up_failure(tmp_path: Path) -> None:
    done = run_websockify("127.0.0.1:0", "--", str(tmp_path / "no-such-program"))
    assert done.returncode == EXIT_STARTUP_FAILURE, done.stderr
    assert "no-such-program" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("option", ["--port-file", "--pid-file", "--log-file"])
@pytest.mark.parametrize("where", ["missing-dir/file", "a-directory"])
def test_an_unwritable_file_is_a_start_up_failure(tmp_path: Path, option: str,
                                                  where: str) -> None:
    (tmp_path / "a-directory").mkdir()
    done = run_websockify(option, str(tmp_path / where), "127.0.0.1:0", "127.0.0.1:1")
    assert done.returncode == EXIT_STARTUP_FAILURE, done.stderr
    assert str(tmp_path / where) in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--legacy-syslog", "127.0.0.1:0", "127.0.0.1:1"], "--legacy-syslog needs --syslog"),
    (["--syslog", "host:port", "127.0.0.1:0", "127.0.0.1:1"], "expected host:port"),
    (["--log-format", "xml", "127.0.0.1:0", "127.0.0.1:1"], "invalid choice"),
    (["--daemon", "--inetd", "127.0.0.1:1"], "--daemon and --inetd exclude each other"),
    (["--socket-activation", "--inetd", "127.0.0.1:1"], "--socket-activation excludes"),
    (["--port-file", "f", "--pid-file", "./f", "127.0.0.1:0", "127.0.0.1:1"], "the same file"),
    (["--port-file", "", "127.0.0.1:0", "127.0.0.1:1"], "--port-file needs a value"),
    (["--syslog", "", "127.0.0.1:0", "127.0.0.1:1"], "--syslog needs a value"),
])
def test_wrong_operations_options_exit_2(args: list[str], message: str) -> None:
    done = run_websockify(*args)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert message in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_write_atomically_replaces_in_one_step(tmp_path: Path) -> None:
    """A reader polling the file sees the old text or the new one, never a mix."""
    path = tmp_path / "file"
    write_atomically(path, "old\n")
    inode = path.stat().st_ino
    write_atomically(path, "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_ino != inode, "a new file was renamed over the old one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_server_that_stops_before_listening_leaves_no_files(tmp_path: Path) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        done = run_websockify("--port-file", str(tmp_path / "port"), "--pid-file",
                              str(tmp_path / "pid"), f"127.0.0.1:{busy.getsockname()[1]}",
                              "127.0.0.1:1")
    finally:
        busy.close()
    assert done.returncode == EXIT_STARTUP_FAILURE
    assert list(tmp_path.iterdir()) == []


def test_pid_file_without_daemon_names_the_server(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with websockify(tmp_path, "--pid-file", str(pid_file), "127.0.0.1:0",
                    "127.0.0.1:1") as server:
        wait_until(pid_file.exists, "the pid file")
        assert pid_file.read_text() == f"{server.proc.pid}\n"
    assert wait_exit(server.proc) == 0
    assert not pid_file.exists()


@pytest.mark.parametrize("option", [["--port-file", "f"], ["--pid-file", "f"], ["-D"],
                                    ["--socket-activation"]])
def test_process_options_are_refused_under_a_wsgi_server(option: list[str]) -> None:
    """gunicorn owns the process: its own --pid, --daemon, socket and readiness."""
    with pytest.raises(ConfigError, match="needs websockify's own server"):
        cli.parse([*option, "127.0.0.1:1"], for_wsgi=True)


def test_log_options_are_accepted_under_a_wsgi_server() -> None:
    settings = cli.parse(["--log-format", "json", "--syslog", "127.0.0.1:514", "127.0.0.1:1"],
                         for_wsgi=True)
    assert settings.operations.log_format == "json"
    assert settings.operations.syslog == ("127.0.0.1", 514)


def test_a_connection_limit_the_open_files_cannot_hold_is_said_at_start(
        tmp_path: Path) -> None:
    """With 256 files at most, the default 10000 connections cannot be reached: one
    line says so at start (each connection holds two descriptors)."""
    with websockify(tmp_path, "127.0.0.1:0", "127.0.0.1:1",
                    program=["bash", "-c", 'ulimit -n 256 && exec "$@"', "bash", sys.executable,
                             "-m", "websockify"]) as server:
        server.wait_for_log("ready on", "the readiness line")
    lowered = [line for line in server.log().splitlines() if "--max-connections lowered" in line]
    assert len(lowered) == 1 and "INFO" in lowered[0], server.log()
    assert "from 10000 to 96 to fit the open-files limit 256" in lowered[0]
