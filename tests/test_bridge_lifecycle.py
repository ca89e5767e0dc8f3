"""End to end: how the server process starts, keeps clients alive and ends.

SIGTERM/SIGINT shutdown with open clients, --run-once, --timeout, --idle-timeout
and --heartbeat, all observed from outside the process as a user would.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.bridge_support import (
    RecordingTarget,
    echo_roundtrip,
    recv_bytes,
    wait_exit,
    ws_connect,
    ws_unix_connect,
)
from tests.launcher_support import echo_server, exists, read_pids
from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TIMEOUT,
    FrameReader,
    TcpServer,
    assert_tcp_closed,
    client_frame,
    close_payload,
    expect_close,
    http_status,
    raw_client,
    raw_request,
    read_http_head,
    send_close,
    upgrade,
    upgrade_request,
    wait_until,
    websockify,
)


def refused_or_not_upgraded(port: int) -> bool:
    """True when a new client cannot get a WebSocket (refused, closed, or no 101)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return http_status(upgrade(sock)) != 101
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError):
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_clients_with_1001_and_exits_0(tmp_path: Path, sig: int) -> None:
    """On SIGTERM/SIGINT every open client gets Close 1001, every target connection
    is closed, new clients are no longer upgraded, and the process exits 0 in < 5 s."""
    target = RecordingTarget()
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
            clients = [raw_client(server.port) for _ in range(3)]
            for index, sock in enumerate(clients):
                sock.sendall(client_frame(OP_BINARY, b"c%d" % index))
                assert FrameReader(sock).read_frame()[2] == b"c%d" % index
            with ws_connect(server.port) as ws:
                ws.send(b"third-party")
                assert recv_bytes(ws, 11) == b"third-party"
                started = time.monotonic()
                server.proc.send_signal(sig)
                for index, sock in enumerate(clients):
                    result = expect_close(sock)
                    assert result.code == 1001, f"client {index}: {result}"
                    if index != 0:  # client 0 never answers the Close
                        send_close(sock, 1001)
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=TIMEOUT)
                assert closed.value.rcvd is not None, "python-websockets got no Close"
                assert closed.value.rcvd.code == 1001
                assert refused_or_not_upgraded(server.port)
                status = wait_exit(server.proc, timeout=5.0)
                elapsed = time.monotonic() - started
            assert status == 0, server.log()
            assert elapsed < 5.0, f"exit took {elapsed:.2f}s"
            assert "Traceback" not in server.log()
            for peer in target.peers:
                assert peer.eof.wait(TIMEOUT), "a target connection was left open"
            assert len(target.peers) == 4
            for sock in clients:
                sock.close()
    finally:
        target.close()


def test_sighup_stops_the_wrapped_program_and_removes_the_unix_socket(tmp_path: Path) -> None:
    """Closing the terminal (SIGHUP) shuts down as SIGTERM does: the client on the
    --unix-listen socket gets Close 1001, the wrapped program and the helper it
    started are stopped, the socket file is removed, and the exit status is 0."""
    path = tmp_path / "ws.sock"
    pids = tmp_path / "pids"
    with websockify(tmp_path, "--unix-listen", str(path), "--", *echo_server(
            "--port", "5901", "--helper", "--pidfile", str(pids)),
            wait_listening=False) as server:
        server.wait_for_log("listening on unix:")
        wait_until(lambda: len(read_pids(pids)) == 2, "the wrapped program and its helper")
        program_tree = set(read_pids(pids))
        with ws_unix_connect(path) as ws:
            ws.send(b"before the hang-up")
            assert recv_bytes(ws, 18) == b"before the hang-up"
            server.proc.send_signal(signal.SIGHUP)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None, "no Close frame before the hang-up"
            assert closed.value.rcvd.code == 1001
        assert wait_exit(server.proc) == 0, server.log()
    assert not path.exists(), "the unix socket was left behind"
    assert [pid for pid in program_tree if exists(pid)] == []
    assert "SIGHUP received, shutting down" in server.log()


def test_sighup_ignored_at_start_stays_ignored(tmp_path: Path, echo_target: TcpServer) -> None:
    """Under ``nohup`` the hang-up is meant to pass: SIGHUP then changes nothing,
    and SIGTERM still stops the server cleanly."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}",
                    program=["nohup", sys.executable, "-m", "websockify"]) as server:
        server.proc.send_signal(signal.SIGHUP)
        echo_roundtrip(server.port)  # the server's loop has run since the signal
        assert server.proc.poll() is None
        assert server.stop(signal.SIGTERM) == 0
    assert "SIGHUP received" not in server.log()


def test_run_once_refuses_a_second_client_with_503_while_the_first_is_open(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """--run-once: a second client arriving while the first is open gets 503 with
    the reason (not a 101 cut later with 1001); the first is served to its end."""
    with websockify(tmp_path, "--run-once", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        with ws_connect(server.port) as first:
            first.send(b"first")
            assert recv_bytes(first, 5) == b"first"
            status, head, body = raw_request(server.port, upgrade_request())
            assert status == 503, head
            assert b"--run-once" in body
            first.send(b"still served")
            assert recv_bytes(first, 12) == b"still served"
            assert server.proc.poll() is None
        assert wait_exit(server.proc) == 0, server.log()


def test_idle_server_exits_0_on_sigterm_quickly(tmp_path: Path, echo_target: TcpServer) -> None:
    """With no client at all, SIGTERM ends the process with status 0 in < 5 s."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert wait_exit(server.proc, timeout=5.0) == 0
        assert time.monotonic() - started < 5.0


def test_run_once_serves_one_websocket_then_exits_0(tmp_path: Path,
                                                    echo_target: TcpServer) -> None:
    """--run-once: the first WebSocket connection is bridged in full; when it ends
    the process exits with status 0."""
    with websockify(tmp_path, "--run-once", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        with ws_connect(server.port) as ws:
            for size in (1, 1000, 100_000):
                ws.send(b"r" * size)
                assert recv_bytes(ws, size) == b"r" * size
            assert server.proc.poll() is None, "exited while its connection was open"
        assert wait_exit(server.proc) == 0, server.log()


def test_timeout_stops_accepting_but_serves_open_clients_until_they_leave(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """--timeout 1: a client connected before the deadline keeps working after it,
    new clients are not served any more, and the process exits 0 once the last
    client has gone."""
    with websockify(tmp_path, "--timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        started = time.monotonic()
        with ws_connect(server.port) as ws:
            ws.send(b"early")
            assert recv_bytes(ws, 5) == b"early"
            while time.monotonic() - started < 1.6:
                time.sleep(0.1)  # let the deadline pass
            assert server.proc.poll() is None, "exited with a client still connected"
            assert refused_or_not_upgraded(server.port)
            ws.send(b"after the deadline")
            assert recv_bytes(ws, 18) == b"after the deadline"
        assert wait_exit(server.proc) == 0, server.log()


def test_timeout_without_clients_exits_0(tmp_path: Path, echo_target: TcpServer) -> None:
    """--timeout 1 with nobody connected: exit status 0 after about a second."""
    with websockify(tmp_path, "--timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        started = time.monotonic()
        assert wait_exit(server.proc) == 0, server.log()
        assert 0.5 <= time.monotonic() - started < 5.0


def test_idle_timeout_exits_only_after_the_last_client_left(tmp_path: Path,
                                                           echo_target: TcpServer) -> None:
    """--idle-timeout 1: a client connected for 2 s keeps the server alive; after it
    leaves, the server exits (status 0) about a second later."""
    with websockify(tmp_path, "--idle-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        with ws_connect(server.port) as ws:
            connected = time.monotonic()
            while time.monotonic() - connected < 2.0:
                ws.send(b"tick")
                assert recv_bytes(ws, 4) == b"tick"
                assert server.proc.poll() is None, "exited while a client was active"
                time.sleep(0.25)
        left = time.monotonic()
        assert wait_exit(server.proc) == 0, server.log()
        assert 0.5 <= time.monotonic() - left < 5.0


def test_idle_timeout_with_no_client_at_all(tmp_path: Path, echo_target: TcpServer) -> None:
    """--idle-timeout 1 and nobody connects: the server exits 0 within a few seconds."""
    with websockify(tmp_path, "--idle-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        started = time.monotonic()
        assert wait_exit(server.proc) == 0, server.log()
        assert 0.5 <= time.monotonic() - started < 5.0


def test_heartbeat_closes_a_client_that_stops_answering_with_1011(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """--heartbeat 1: a client that answers one ping and then ignores the next is
    closed with 1011 by the time the following ping is due."""
    with websockify(tmp_path, "--heartbeat", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, raw_client(server.port) as sock:
        reader = FrameReader(sock)
        sock.settimeout(3.0)
        opcode, _, payload = reader.read_frame()
        assert opcode == OP_PING
        sock.sendall(client_frame(OP_PONG, payload))
        opcode, _, _ = reader.read_frame()
        assert opcode == OP_PING, "an answering client must get the next ping, not a close"
        unanswered = time.monotonic()
        result = reader.expect_close()
        assert result.code == 1011, result
        assert time.monotonic() - unanswered <= 3.0
        with suppress(OSError):
            sock.sendall(client_frame(OP_CLOSE, close_payload(1000)))
        assert_tcp_closed(sock)
        echo_roundtrip(server.port)


def test_python_websockets_client_survives_heartbeats(tmp_path: Path,
                                                      echo_target: TcpServer) -> None:
    """The stock client answers pings by itself and is not dropped by --heartbeat."""
    with websockify(tmp_path, "--heartbeat", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, ws_connect(server.port) as ws:
        time.sleep(2.3)  # two heartbeats, one judged: the passing of time is the point
        ws.send(b"ok")
        assert recv_bytes(ws, 2) == b"ok"


def test_plain_http_connection_does_not_count_as_websocket_for_run_once(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """--run-once counts WebSocket connections: a plain GET (405) first does not end
    the server, the following WebSocket is still served."""
    with websockify(tmp_path, "--run-once", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert http_status(read_http_head(sock)) == 405
        with ws_connect(server.port) as ws:
            ws.send(b"once")
            assert recv_bytes(ws, 4) == b"once"
        assert wait_exit(server.proc) == 0
