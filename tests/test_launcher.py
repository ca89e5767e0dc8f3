"""The launcher end to end: a real websockify process wrapping real programs.

The wrapped program is tests/programs/fixed_port_server.py, an echo server that
binds a fixed port as a VNC server does (5901 for display :1), alone or behind
tests/programs/daemonize.py, which daemonizes it as TigerVNC's vncserver does.
Ports the shim does not move are free ports, so they never collide.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.launcher_support import (
    REPO,
    accepts,
    build_static_echo,
    daemonized,
    descendants,
    echo_server,
    exists,
    free_port,
    read_pids,
    ws_roundtrip,
    ws_send,
    zombies_of,
)
from tests.support import (
    TIMEOUT,
    TcpServer,
    Websockify,
    close_code,
    http_status,
    open_websocket,
    read_server_frame,
    recv_exact,
    wait_until,
    websockify,
)
from websockify import launcher
from websockify.errors import LauncherError
from websockify.launcher.listener_report import Listener, parse_report
from websockify.settings import TcpAddress, UnixAddress


def wrap(tmp_path: Path, rebind: Path, *command: str, options: tuple[str, ...] = (),
         listen: str = "127.0.0.1:0", **kwargs: object) -> Websockify:
    """websockify [options] --rebind <built shim> LISTEN -- COMMAND (not yet stopped)."""
    args = [*options, "--rebind", str(rebind), listen, "--", *command]
    return Websockify(args, tmp_path / f"websockify-{time.monotonic_ns()}.log", **kwargs)


def refused_with(port: int) -> int | None:
    """The close code websockify answers a client with when it has no target."""
    sock, head = open_websocket(port)
    try:
        assert http_status(head) == 101, head
        opcode, _, payload = read_server_frame(sock)
        assert opcode == 0x8
        return close_code(payload)
    finally:
        sock.close()


@pytest.mark.parametrize("family", ["4", "6", "both"])
def test_a_program_on_its_own_port_is_relayed(tmp_path: Path, rebind: Path, family: str) -> None:
    server = wrap(tmp_path, rebind, *echo_server("--port", "5901", "--family", family))
    try:
        assert ws_roundtrip(server.port, b"hello") == b"hello"
        assert "listens on port 5901, moved to" in server.log()
    finally:
        server.stop()


def test_the_program_port_may_be_in_use_by_someone_else(tmp_path: Path, rebind: Path) -> None:
    other = TcpServer(lambda conn: conn.sendall(b"not the program"))
    try:
        server = wrap(tmp_path, rebind, *echo_server("--port", str(other.port)))
        try:
            assert ws_roundtrip(server.port, b"PORT?") == b"PORT %d" % other.port
        finally:
            server.stop()
    finally:
        other.close()


def test_upstream_form_the_program_binds_websockifys_port(tmp_path: Path, rebind: Path) -> None:
    port = free_port()
    server = wrap(tmp_path, rebind, *echo_server("--port", str(port)), listen=f"127.0.0.1:{port}")
    try:
        assert server.port == port
        assert ws_roundtrip(port, b"PORT?") == b"PORT %d" % port
    finally:
        server.stop()


def port_answer(port: int) -> bytes:
    """``PORT?`` asked straight of a test server on 127.0.0.1:``port``, not through
    websockify: it answers with the port its listener was bound to."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PORT?")
        return recv_exact(sock, len(b"PORT %d" % port))


@pytest.mark.parametrize("wrap_port", [False, True], ids=["first listener", "--wrap-port"])
def test_of_two_listeners_the_right_one_is_relayed_and_the_other_keeps_its_port(
        tmp_path: Path, rebind: Path, wrap_port: bool) -> None:
    first, second = free_port(), free_port()
    relayed, kept = (second, first) if wrap_port else (first, second)
    options = ("--wrap-port", str(second)) if wrap_port else ()
    server = wrap(tmp_path, rebind, *echo_server("--port", str(first), "--port", str(second)),
                  options=options)
    try:
        assert ws_roundtrip(server.port, b"PORT?") == b"PORT %d" % relayed
        assert port_answer(kept) == b"PORT %d" % kept
        assert server.log().count("listens on port") == 1
    finally:
        server.stop()


def test_a_server_started_later_from_the_program_keeps_its_port(
        tmp_path: Path, rebind: Path) -> None:
    """As a development server started from a terminal of a VNC desktop."""
    later = free_port()
    server = wrap(tmp_path, rebind, *echo_server("--port", "5901", "--then-serve", str(later)))
    try:
        assert ws_roundtrip(server.port, b"PORT?") == b"PORT 5901"
        wait_until(lambda: accepts(later), f"the second server on port {later}")
        assert port_answer(later) == b"PORT %d" % later
        assert server.log().count("listens on port") == 1
    finally:
        server.stop()


def test_a_unix_target_program_is_relayed_and_followed(tmp_path: Path, rebind: Path) -> None:
    path = tmp_path / "program.sock"
    server = wrap(tmp_path, rebind, *echo_server("--unix", str(path)),
                  options=("--unix-target", str(path)))
    try:
        assert ws_roundtrip(server.port, b"over unix") == b"over unix"
        assert f"listens on unix:{path}" in server.log()
        ws_send(server.port, b"EXIT 6")
        assert server.proc.wait(TIMEOUT) == 6
    finally:
        server.stop()


def test_wrap_port_with_a_unix_target_is_refused(tmp_path: Path, rebind: Path) -> None:
    server = wrap(tmp_path, rebind, *echo_server("--port", "5901"),
                  options=("--unix-target", str(tmp_path / "s"), "--wrap-port", "5901"),
                  wait_listening=False)
    assert server.proc.wait(TIMEOUT) == 2
    server.stop()
    assert "with --unix-target the wrapped program listens on that unix socket" in server.log()


def test_a_static_program_gets_one_clear_error_within_the_timeout(
        tmp_path: Path, rebind: Path) -> None:
    """LD_PRELOAD cannot reach a statically linked program: its port is not moved."""
    static = build_static_echo(tmp_path)
    port = free_port()
    # Long enough for the program to listen (a static binary starts at once).
    server = wrap(tmp_path, rebind, str(static), str(port), options=("--connect-timeout", "2"))
    try:
        server.wait_for_log("rebind.so could not move it", timeout=2 + TIMEOUT)
        errors = [line for line in server.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors
        assert f"'static_echo' listens on 0.0.0.0:{port}" in errors[0]
        assert f"`websockify {server.port} 127.0.0.1:{port}`" in errors[0]
        assert refused_with(server.port) == 1011
    finally:
        server.stop()


def test_a_daemonized_server_is_followed_and_reaped(tmp_path: Path, rebind: Path) -> None:
    pids = tmp_path / "pids"
    server = wrap(tmp_path, rebind,
                  *daemonized(echo_server("--port", "5901", "--pidfile", str(pids))))
    try:
        assert ws_roundtrip(server.port, b"hello") == b"hello"
        (daemon,) = read_pids(pids)
        # The wrapper and its intermediate child exited; websockify adopted the daemon
        # (child subreaper) and reaped the others.
        assert server.proc.poll() is None
        assert daemon in descendants(server.proc.pid)
        wait_until(lambda: not zombies_of(server.proc.pid), "no zombies")
        ws_send(server.port, b"EXIT 7")
        assert server.proc.wait(TIMEOUT) == 7
    finally:
        server.stop()


def behind_a_shell(command: list[str]) -> list[str]:
    """``command`` as a child of sh, which waits for it and exits with its status."""
    return ["sh", "-c", '"$@"; exit $?', "sh", *command]


@pytest.mark.parametrize("how", ["direct", "daemonized", "behind a shell"])
def test_exit_mode_exits_with_the_status_of_the_server(
        tmp_path: Path, rebind: Path, how: str) -> None:
    command = echo_server("--port", "5901")
    wrapped = {"direct": command, "daemonized": daemonized(command),
               "behind a shell": behind_a_shell(command)}[how]
    server = wrap(tmp_path, rebind, *wrapped)
    try:
        ws_send(server.port, b"EXIT 3")
        assert server.proc.wait(TIMEOUT) == 3
    finally:
        server.stop()


def test_a_server_killed_by_a_signal_gives_128_plus_the_signal(
        tmp_path: Path, rebind: Path) -> None:
    pids = tmp_path / "pids"
    server = wrap(tmp_path, rebind,
                  *daemonized(echo_server("--port", "5901", "--pidfile", str(pids))))
    try:
        wait_until(lambda: read_pids(pids), "the server's pid")
        os.kill(read_pids(pids)[0], signal.SIGKILL)
        assert server.proc.wait(TIMEOUT) == 128 + signal.SIGKILL
    finally:
        server.stop()


@pytest.mark.parametrize(("command", "status"), [
    (["sh", "-c", "exit 4"], 4),
    (daemonized(["sh", "-c", "sleep 0.2; exit 5"]), 5),
], ids=["direct", "daemonized"])
def test_a_program_that_fails_before_listening_ends_websockify(
        tmp_path: Path, rebind: Path, command: list[str], status: int) -> None:
    server = wrap(tmp_path, rebind, *command, wait_listening=False)
    try:
        assert server.proc.wait(TIMEOUT) == status
    finally:
        server.stop()


def test_ignore_mode_keeps_websockify_running(tmp_path: Path, rebind: Path) -> None:
    server = wrap(tmp_path, rebind, *echo_server("--port", "5901"),
                  options=("--wrap-mode", "ignore"))
    try:
        ws_send(server.port, b"EXIT 0")
        server.wait_for_log("wrapped program ended with status 0")
        assert refused_with(server.port) == 1011
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


def test_respawn_restarts_a_killed_server(tmp_path: Path, rebind: Path) -> None:
    pids = tmp_path / "pids"
    server = wrap(tmp_path, rebind,
                  *daemonized(echo_server("--port", "5901", "--pidfile", str(pids))),
                  options=("--wrap-mode", "respawn"))
    try:
        assert ws_roundtrip(server.port, b"first") == b"first"
        (first,) = read_pids(pids)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(read_pids(pids)) == 2, "a second server")
        assert ws_roundtrip(server.port, b"second") == b"second"
        assert not exists(first)
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_respawn_backs_off_when_the_program_dies_quickly_again_and_again(
        tmp_path: Path, rebind: Path) -> None:
    """Started at once, then after 0.5 s and 1 s (the delays are table-tested in
    test_wrap_policy.py; here real processes show they are applied)."""
    starts = tmp_path / "starts"
    script = f"{sys.executable} -c 'import time; print(time.monotonic())' >> {starts}; exit 1"
    server = wrap(tmp_path, rebind, "sh", "-c", script,
                  options=("--wrap-mode", "respawn"), wait_listening=False)
    try:
        wait_until(lambda: starts.exists() and len(starts.read_text().split()) >= 4,
                   "four starts")
        times = [float(line) for line in starts.read_text().split()]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps[1] >= 0.5 and gaps[2] >= 1.0, gaps
        assert server.proc.poll() is None
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_websockify_stops_the_whole_tree(
        tmp_path: Path, rebind: Path, sig: signal.Signals) -> None:
    pids = tmp_path / "pids"
    server = wrap(tmp_path, rebind, *daemonized(
        echo_server("--port", "5901", "--helper", "--pidfile", str(pids))))
    try:
        assert ws_roundtrip(server.port, b"hello") == b"hello"
        tree = descendants(server.proc.pid)
        assert set(read_pids(pids)) <= tree
        assert len(read_pids(pids)) == 2
    finally:
        assert server.stop(sig) == 0
    assert [pid for pid in tree if exists(pid)] == []


def ignores_sigterm(pid: int) -> bool:
    """Whether ``pid`` has set SIGTERM to be ignored (SigIgn of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
        tmp_path: Path, rebind: Path) -> None:
    pids = tmp_path / "pids"
    server = wrap(tmp_path, rebind,
                  *echo_server("--port", "5901", "--stubborn-helper", "--pidfile", str(pids)))
    try:
        assert ws_roundtrip(server.port, b"hello") == b"hello"
        stubborn = read_pids(pids)[1]
        wait_until(lambda: ignores_sigterm(stubborn), "the helper to ignore SIGTERM")
    finally:
        assert server.stop() == 0
    assert not exists(stubborn)
    assert "SIGKILL" in server.log()


def test_clients_that_arrive_early_wait_for_the_listener(tmp_path: Path, rebind: Path) -> None:
    server = wrap(tmp_path, rebind, *echo_server("--port", "5901", "--delay", "1.5"))
    try:
        started = time.monotonic()
        assert ws_roundtrip(server.port, b"early") == b"early"
        assert time.monotonic() - started > 1.0
    finally:
        server.stop()


def test_the_wait_for_a_listener_is_bounded(tmp_path: Path, rebind: Path) -> None:
    server = wrap(tmp_path, rebind, sys.executable, "-c", "import time; time.sleep(600)",
                  options=("--connect-timeout", "1"))
    try:
        started = time.monotonic()
        assert refused_with(server.port) == 1011
        assert time.monotonic() - started < 1.0 + TIMEOUT / 5
        assert "did not listen within 1s" in server.log()
        assert "has not listened within 1s; if it is statically linked" in server.log()
    finally:
        server.stop()


def test_a_unix_target_that_never_listens_is_explained(tmp_path: Path, rebind: Path) -> None:
    path = tmp_path / "never.sock"
    server = wrap(tmp_path, rebind, sys.executable, "-c", "import time; time.sleep(600)",
                  options=("--unix-target", str(path), "--connect-timeout", "1"))
    try:
        server.wait_for_log(f"has not listened on unix:{path} within 1s", timeout=1 + TIMEOUT)
        assert f"`websockify --unix-target={path} {server.port}`" in server.log()
        assert refused_with(server.port) == 1011
    finally:
        server.stop()


def test_a_missing_rebind_so_is_a_clear_error(tmp_path: Path) -> None:
    server = wrap(tmp_path, tmp_path / "nowhere" / "rebind.so", *echo_server("--port", "5901"),
                  wait_listening=False)
    assert server.proc.wait(TIMEOUT) != 0
    server.stop()
    assert "rebind.so not found" in server.log()
    assert "make rebind" in server.log()


def test_the_environment_variable_names_the_shim(tmp_path: Path, rebind: Path) -> None:
    command = ["--", *echo_server("--port", "5901")]
    with websockify(tmp_path, "127.0.0.1:0", *command,
                    env={"WEBSOCKIFY_REBIND": str(rebind)}) as server:
        assert ws_roundtrip(server.port, b"hello") == b"hello"


def test_the_shim_built_in_the_source_tree_is_found_without_a_setting(tmp_path: Path) -> None:
    assert (REPO / "websockify" / "rebind.so").is_file(), "run `make rebind` first"
    with websockify(tmp_path, "127.0.0.1:0", "--", *echo_server("--port", "5901"),
                    env={"WEBSOCKIFY_REBIND": ""}) as server:
        assert ws_roundtrip(server.port, b"hello") == b"hello"


def test_the_users_ld_preload_is_kept_after_the_shim(tmp_path: Path, rebind: Path) -> None:
    user_lib = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                    if "/libm.so" in line)
    seen = tmp_path / "ld_preload"
    script = f'echo "$LD_PRELOAD" > {seen}; exec "$@"'
    server = wrap(tmp_path, rebind, "sh", "-c", script, "sh", *echo_server("--port", "5901"),
                  env={"LD_PRELOAD": user_lib})
    try:
        assert ws_roundtrip(server.port, b"hello") == b"hello"
        assert seen.read_text().strip() == f"{rebind.resolve()}:{user_lib}"
    finally:
        server.stop()


# -- the pieces without processes ---------------------------------------------------

def test_report_lines_are_parsed_and_partial_or_foreign_lines_skipped() -> None:
    data = (b"12 tcp 5901 127.0.0.1 40000 77\n13 tcp 5901 ::1 40001 78\ngarbage\n"
            b"14 tcp 5901 10.0.0.1 1 79\n15 unix /run/a b.sock\n16 unix relative\n"
            b"17 tcp 59")
    assert parse_report(data) == [
        Listener(12, TcpAddress("127.0.0.1", 40000), 5901),
        Listener(13, TcpAddress("::1", 40001), 5901),
        Listener(15, UnixAddress("/run/a b.sock")),
    ]


def test_rebind_lookup_order(tmp_path: Path, rebind: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.so"
    other.write_bytes(rebind.read_bytes())
    monkeypatch.setenv("WEBSOCKIFY_REBIND", str(other))
    assert launcher.find_rebind(str(rebind)) == rebind.resolve()
    assert launcher.find_rebind(None) == other.resolve()
    monkeypatch.delenv("WEBSOCKIFY_REBIND")
    assert launcher.find_rebind(None) == launcher.PACKAGED_REBIND


def test_rebind_paths_ld_preload_cannot_hold_are_refused(tmp_path: Path, rebind: Path) -> None:
    odd = tmp_path / "with space"
    odd.mkdir()
    (odd / "rebind.so").write_bytes(rebind.read_bytes())
    with pytest.raises(LauncherError, match="LD_PRELOAD"):
        launcher.find_rebind(str(odd / "rebind.so"))
