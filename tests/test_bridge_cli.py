"""End to end: the command line as a user types it.

Listen and target forms (TCP v4/v6, bare port, unix sockets, inetd), logging
options, and wrong command lines (exit status 2, one line, no traceback).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest

from tests.bridge_support import (
    echo_roundtrip,
    ipv6_loopback_available,
    recv_bytes,
    unix_echo_server,
    wait_exit,
    ws_connect,
    ws_unix_connect,
)
from tests.support import (
    LISTENING,
    TIMEOUT,
    TcpServer,
    Websockify,
    echo,
    run_websockify,
    wait_until,
    websockify,
)

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no ::1 on this host")


def unix_roundtrip_works(path: Path) -> bool:
    """True once a python-websockets client on the unix socket ``path`` is bridged."""
    if not path.exists():
        return False
    try:
        with ws_unix_connect(path) as ws:
            ws.send(b"over unix")
            return recv_bytes(ws, 9) == b"over unix"
    except (ConnectionRefusedError, FileNotFoundError):
        return False


def test_listening_line_names_the_real_port(tmp_path: Path, echo_target: TcpServer) -> None:
    """Port 0 is resolved: the log says "listening on 127.0.0.1:PORT" with the port
    the server actually got, and a client on that port is bridged."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        assert server.port > 0
        assert f"listening on 127.0.0.1:{server.port}" in server.log()
        echo_roundtrip(server.port)


def test_bare_source_port_listens_on_all_interfaces(tmp_path: Path,
                                                    echo_target: TcpServer) -> None:
    """``websockify 0 HOST:PORT`` (no source address) accepts clients on 127.0.0.1."""
    with websockify(tmp_path, "0", f"127.0.0.1:{echo_target.port}") as server:
        echo_roundtrip(server.port)


@needs_ipv6
def test_ipv6_listen_address_in_brackets(tmp_path: Path, echo_target: TcpServer) -> None:
    """``[::1]:0`` listens on ::1, logs "listening on [::1]:PORT", and bridges."""
    with websockify(tmp_path, "[::1]:0", f"127.0.0.1:{echo_target.port}") as server:
        assert f"listening on [::1]:{server.port}" in server.log()
        with ws_connect(server.port, host="::1") as ws:
            ws.send(b"v6 client")
            assert recv_bytes(ws, 9) == b"v6 client"


@needs_ipv6
def test_ipv6_target_in_brackets(tmp_path: Path) -> None:
    """A target written ``[::1]:PORT`` is reached over IPv6."""
    target = TcpServer(echo, family=socket.AF_INET6, host="::1")
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"[::1]:{target.port}") as server:
            echo_roundtrip(server.port, b"to a v6 target")
    finally:
        target.close()


@needs_ipv6
def test_prefer_ipv6_resolves_the_source_name_to_ipv6(tmp_path: Path,
                                                      echo_target: TcpServer) -> None:
    """-6: a source host name with both address families is listened on via IPv6."""
    families = {info[0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    if socket.AF_INET6 not in families:
        pytest.skip("localhost has no IPv6 address here")
    with websockify(tmp_path, "-6", "localhost:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port, host="::1") as ws:
        ws.send(b"six")
        assert recv_bytes(ws, 3) == b"six"


def test_unix_target(tmp_path: Path) -> None:
    """--unix-target FILE relays to a real unix-socket echo server."""
    path = tmp_path / "target.sock"
    target = unix_echo_server(path)
    try:
        with websockify(tmp_path, "--unix-target", str(path), "127.0.0.1:0") as server:
            echo_roundtrip(server.port, b"through a unix socket" * 100)
            assert len(target.connections) == 1
    finally:
        target.close()


@pytest.mark.parametrize("mode", ["600", "660"])
def test_unix_listen_with_mode(tmp_path: Path, echo_target: TcpServer, mode: str) -> None:
    """--unix-listen FILE --unix-listen-mode MODE: clients connect over the unix
    socket and the socket file has exactly that (octal) mode."""
    path = tmp_path / "listen.sock"
    with websockify(tmp_path, "--unix-listen", str(path), "--unix-listen-mode", mode,
                    f"127.0.0.1:{echo_target.port}", wait_listening=False) as server:
        wait_until(lambda: unix_roundtrip_works(path), "a client over --unix-listen")
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert oct(stat.S_IMODE(info.st_mode)) == oct(int(mode, 8))
        assert server.proc.poll() is None


def unix_websockify(tmp_path: Path, path: Path, target_port: int) -> Websockify:
    """websockify --unix-listen ``path``, started and (unless it exits) listening."""
    server = Websockify(["--unix-listen", str(path), f"127.0.0.1:{target_port}"],
                        tmp_path / f"websockify-{time.monotonic_ns()}.log", wait_listening=False)
    server.wait_for_log(r"listening on unix:|ERROR", what="listening or an error")
    return server


def test_a_second_instance_on_a_live_unix_socket_refuses_to_start(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """A second websockify on the --unix-listen path of a running one exits with
    status 3 (cannot start) and a clear error; the first keeps its socket and its
    clients."""
    path = tmp_path / "shared.sock"
    first = unix_websockify(tmp_path, path, echo_target.port)
    try:
        wait_until(lambda: unix_roundtrip_works(path), "the first instance serving")
        inode = path.stat().st_ino
        second = unix_websockify(tmp_path, path, echo_target.port)
        assert wait_exit(second.proc) == 3, second.log()
        second.stop()
        assert f"cannot listen on unix:{path}: another server is listening there" in second.log()
        assert "Traceback" not in second.log()
        assert path.stat().st_ino == inode, "the first instance's socket file was replaced"
        assert unix_roundtrip_works(path)
    finally:
        assert first.stop() == 0
    assert not path.exists()


def test_a_port_in_use_exits_3_not_2(tmp_path: Path, echo_target: TcpServer) -> None:
    """The command line is right, the address is taken: exit status 3, cannot start
    (2 is kept for wrong command lines), one error line."""
    done = run_websockify(f"127.0.0.1:{echo_target.port}", f"127.0.0.1:{echo_target.port}")
    assert done.returncode == 3, done.stderr
    assert f"cannot listen on 127.0.0.1:{echo_target.port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stale_unix_socket_file_is_replaced(tmp_path: Path, echo_target: TcpServer) -> None:
    """A socket file nobody answers on (a crashed run's leftover) is removed and
    the path served."""
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: connect() is refused
    server = unix_websockify(tmp_path, path, echo_target.port)
    try:
        wait_until(lambda: unix_roundtrip_works(path), "a client over the reclaimed path")
    finally:
        assert server.stop() == 0


def test_a_unix_listen_path_that_is_not_a_socket_is_left_alone(
        tmp_path: Path, echo_target: TcpServer) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("precious")
    server = unix_websockify(tmp_path, path, echo_target.port)
    assert wait_exit(server.proc) == 3
    server.stop()
    assert f"cannot listen on unix:{path}: it exists and is not a socket" in server.log()
    assert path.read_text() == "precious"


def test_a_start_that_fails_after_binding_leaves_no_socket_file(tmp_path: Path) -> None:
    """The wrapped program cannot start (no rebind.so): websockify fails, and the
    socket file bound just before is removed, not left for the next run to find."""
    path = tmp_path / "failed.sock"
    done = run_websockify("--unix-listen", str(path),
                          "--rebind", str(tmp_path / "nowhere" / "rebind.so"), "--", "true")
    assert done.returncode != 0, done.stderr  # the launcher's own status for this
    assert "rebind.so not found" in done.stderr
    assert not path.exists()


def test_exit_removes_only_a_unix_socket_that_is_still_its_own(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """When the path has been given to another server meanwhile, stopping removes
    nothing: the other server's socket file stays and keeps answering."""
    path = tmp_path / "taken.sock"
    server = unix_websockify(tmp_path, path, echo_target.port)
    other = None
    try:
        wait_until(lambda: unix_roundtrip_works(path), "websockify serving")
        path.unlink()
        other = TcpServer(echo, unix_path=path)
    finally:
        assert server.stop() == 0
    try:
        assert path.exists(), "websockify removed a socket file that was not its own"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(TIMEOUT)
            probe.connect(str(path))
            probe.sendall(b"mine")
            assert probe.recv(4) == b"mine"
    finally:
        if other is not None:
            other.close()


def test_inetd_uses_the_listening_socket_passed_as_stdin(tmp_path: Path,
                                                         echo_target: TcpServer) -> None:
    """--inetd: the server accepts clients on the listening socket it got as fd 0."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        with websockify(tmp_path, "--inetd", f"127.0.0.1:{echo_target.port}",
                        stdin=listener.fileno(), wait_listening=False) as server:
            listener.close()  # only the server holds it now
            for _ in range(2):
                echo_roundtrip(port, b"inetd")
            assert server.proc.poll() is None
    finally:
        listener.close()


def test_verbose_logs_more_than_the_default(tmp_path: Path, echo_target: TcpServer) -> None:
    """-v adds debug lines: the same session logs strictly more lines with it."""
    def session_log(*extra: str) -> list[str]:
        with websockify(tmp_path, *extra, "127.0.0.1:0",
                        f"127.0.0.1:{echo_target.port}") as server:
            echo_roundtrip(server.port)
            server.stop()  # the log is complete once the process has exited
            return [line for line in server.log().splitlines() if line.strip()]

    quiet = session_log()
    verbose = session_log("-v")
    assert len(verbose) > len(quiet), f"-v: {len(verbose)} lines, default: {len(quiet)}"
    assert "Traceback" not in "\n".join(verbose)


def test_log_file_receives_the_log(tmp_path: Path, echo_target: TcpServer) -> None:
    """--log-file FILE: the listening line and the connection's lines land in FILE."""
    log_file = tmp_path / "websockify.log"
    with websockify(tmp_path, "--log-file", str(log_file), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}", wait_listening=False) as server:
        wait_until(lambda: log_file.exists() and LISTENING.search(log_file.read_text()),
                   "the listening line in --log-file")
        match = LISTENING.search(log_file.read_text())
        assert match is not None
        port = int(match.group("port"))
        lines_before = len(log_file.read_text().splitlines())
        echo_roundtrip(port)
        wait_until(lambda: len(log_file.read_text().splitlines()) > lines_before,
                   "a line about the connection in --log-file")
        assert server.proc.poll() is None


BAD_COMMAND_LINES: dict[str, list[str]] = {
    "nothing": [],
    "missing-target": ["127.0.0.1:0"],
    "non-numeric-port": ["127.0.0.1:notaport", "127.0.0.1:5900"],
    "port-out-of-range": ["127.0.0.1:70000", "127.0.0.1:5900"],
    "bad-target-port": ["127.0.0.1:0", "127.0.0.1:59x0"],
    "empty-target-port": ["127.0.0.1:0", "127.0.0.1:"],
    "unknown-option": ["--no-such-option", "127.0.0.1:0", "127.0.0.1:5900"],
    "bad-unix-listen-mode": ["--unix-listen", "{tmp}/s.sock", "--unix-listen-mode", "9z",
                             "127.0.0.1:5900"],
    "non-numeric-max-connections": ["--max-connections", "many", "127.0.0.1:0",
                                    "127.0.0.1:5900"],
    "too-many-positionals": ["127.0.0.1:0", "127.0.0.1:5900", "extra"],
    "zero-handshake-timeout": ["--handshake-timeout", "0", "127.0.0.1:0", "127.0.0.1:5900"],
    "negative-handshake-timeout": ["--handshake-timeout", "-1", "127.0.0.1:0",
                                   "127.0.0.1:5900"],
    "zero-connect-timeout": ["--connect-timeout", "0", "127.0.0.1:0", "127.0.0.1:5900"],
}


@pytest.mark.parametrize("name", list(BAD_COMMAND_LINES))
def test_wrong_command_line_exits_2_with_one_line(tmp_path: Path, name: str) -> None:
    """A wrong command line: exit status 2, exactly one line on stderr, no traceback,
    and nothing started (nothing on stdout)."""
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in BAD_COMMAND_LINES[name]]
    done = run_websockify(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"{name}: exit {done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, f"{name}: stderr has {len(lines)} lines:\n{done.stderr}"
    assert "listening" not in done.stdout + done.stderr
