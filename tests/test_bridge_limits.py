"""End to end: hostile or broken clients cannot hurt the bridge.

Malformed requests get a 4xx and a close, stalled handshakes are dropped, the
connection limit answers 503, oversized messages get 1009, and hundreds of
connections (many killed mid-frame) leave no file descriptor behind.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.bridge_support import (
    RecordingTarget,
    abort,
    echo_roundtrip,
    fd_count,
    recv_bytes,
    send_in_background,
    ws_connect,
)
from tests.support import (
    OP_BINARY,
    OP_CONT,
    TIMEOUT,
    FrameReader,
    TcpServer,
    assert_tcp_closed,
    client_frame,
    expect_close,
    http_status,
    raw_request,
    read_http_head,
    send_close,
    upgrade,
    upgrade_request,
    wait_until,
    websockify,
)


def status_then_close(port: int, request: bytes) -> int:
    """Send ``request`` (in the background: the server may refuse it half-read),
    return the response status and check the server then closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sender = send_in_background(sock, request)
        head = read_http_head(sock)
        assert_tcp_closed_after_response(sock)
        sender.join(TIMEOUT)
        return http_status(head)


def assert_tcp_closed_after_response(sock: socket.socket, timeout: float = 3.0) -> None:
    """After an error response the server hangs up at once (a body may still follow);
    ``timeout`` stays well below the default 10 s handshake timeout, so that an idle
    keep-alive drop is not mistaken for a close."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return
    except ConnectionResetError:
        return
    except TimeoutError:
        pass
    raise AssertionError(f"server kept the connection open {timeout}s after its response")


GARBAGE_REQUESTS: dict[str, bytes] = {
    "binary-noise": b"\x00\x01\x02\xff\xfe garbage \x80\r\n\r\n",
    "not-http": b"HELLO WORLD\r\n\r\n",
    "method-only": b"GET\r\n\r\n",
    "bad-version": b"GET / SPDY/9\r\nHost: x\r\n\r\n",
    "header-without-colon": b"GET / HTTP/1.1\r\nHost localhost\r\nUpgrade: websocket\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(GARBAGE_REQUESTS))
def test_garbage_request_gets_4xx_and_close(tmp_path: Path, echo_target: TcpServer,
                                            name: str) -> None:
    """A request that isn't HTTP gets a 4xx response, a close, and the server
    goes on serving WebSocket clients."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        status = status_then_close(server.port, GARBAGE_REQUESTS[name])
        assert 400 <= status < 500, f"{name}: status {status}"
        echo_roundtrip(server.port)
        assert "Traceback" not in server.log()


def test_huge_header_line_and_header_flood_get_4xx(tmp_path: Path,
                                                   echo_target: TcpServer) -> None:
    """A 128 KiB header line, and 2,000 header lines, each get a 4xx and a close,
    and the server keeps serving."""
    start = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    huge_line = start + b"X-Huge: " + b"a" * (128 * 1024) + b"\r\n\r\n"
    many_lines = start + b"".join(b"X-Header-%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        for label, request in (("128 KiB line", huge_line), ("2000 lines", many_lines)):
            status = status_then_close(server.port, request)
            assert 400 <= status < 500, f"{label}: status {status}"
        echo_roundtrip(server.port)


def test_half_handshake_is_dropped_after_the_handshake_timeout(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """A client that sends half a request and stalls is disconnected after
    --handshake-timeout (1 s), not before, not much later; others are unaffected."""
    with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: webs")
        started = time.monotonic()
        echo_roundtrip(server.port)  # a concurrent, well-behaved client is served
        assert_tcp_closed_after_response(sock)
        elapsed = time.monotonic() - started
        assert 0.7 <= elapsed <= 4.0, f"dropped after {elapsed:.2f}s"


def trickle_until_closed(sock: socket.socket, limit: float,
                         stop: threading.Event | None = None) -> float | None:
    """Send one byte every 0.2 s until the server hangs up; returns after how many
    seconds it did, or None if it kept the connection for ``limit`` s (or until
    ``stop``).  A response the server sends first is read and skipped."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit and not (stop and stop.is_set()):
        try:
            sock.sendall(b"X")
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def test_handshake_trickled_slowly_is_still_dropped(tmp_path: Path,
                                                    echo_target: TcpServer) -> None:
    """The handshake timeout is a deadline for the whole request: sending one
    header byte every 0.2 s does not keep a connection alive past it."""
    with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed_after = trickle_until_closed(sock, 5.0)
        assert closed_after is not None, "a trickling client was kept for 5 s"
        assert closed_after <= 4.0, f"dropped only after {closed_after:.2f}s"


@pytest.mark.parametrize(("method", "framing"), [
    ("GET", "Content-Length: 100000"), ("POST", "Transfer-Encoding: chunked"),
])
def test_request_body_trickled_slowly_is_dropped_at_the_deadline(
        tmp_path: Path, echo_target: TcpServer, method: str, framing: str) -> None:
    """The body is part of the request: trickled one byte every 0.2 s it is cut at
    --handshake-timeout, whatever the application answers, with one log line."""
    with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"{method} / HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()
                     + (b"186a0\r\n" if "chunked" in framing else b""))
        closed_after = trickle_until_closed(sock, 5.0)
        assert closed_after is not None, "a client trickling its body was kept for 5 s"
        assert closed_after <= 4.0, f"dropped only after {closed_after:.2f}s"
        server.wait_for_log("request body not complete within the handshake timeout")
        echo_roundtrip(server.port)
        assert "Traceback" not in server.log(), server.log()


def test_upgrade_announcing_a_trickled_body_is_refused_and_not_drained(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """The 400 for an upgrade with a body comes before any of the body is read, and
    the connection is closed after it: the body is not drained byte by byte (which
    a trickling client could stretch for as long as it likes)."""
    with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(UPGRADE_HEAD + b"Content-Length: 100000\r\n\r\n")
        assert http_status(read_http_head(sock)) == 400
        closed_after = trickle_until_closed(sock, 5.0)
        assert closed_after is not None, "the refused client was kept while it trickled"


def test_five_body_tricklers_do_not_lock_out_max_connections_5(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """--max-connections 5 filled by five clients trickling request bodies: they are
    dropped at --handshake-timeout (1 s), so a real client gets in while they are
    still trickling, and each trickler saw the server hang up."""
    with websockify(tmp_path, "--max-connections", "5", "--handshake-timeout", "1",
                    "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        stop = threading.Event()
        started = threading.Semaphore(0)
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"

        def trickler() -> float | None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(request)
                started.release()
                # Longer than the wait for a real client below: on a server that
                # lets them, the five hold their slots for the whole of that wait.
                return trickle_until_closed(sock, 2 * TIMEOUT, stop)

        def admitted() -> bool:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
                return http_status(upgrade(s)) == 101

        with ThreadPoolExecutor(max_workers=5) as pool:
            tricklers = [pool.submit(trickler) for _ in range(5)]
            try:
                for _ in tricklers:
                    assert started.acquire(timeout=TIMEOUT), "a trickler could not connect"
                wait_until(admitted, "a real client admitted while the five trickle")
                dropped = [t.result(timeout=3 * TIMEOUT) for t in tricklers]
            finally:
                stop.set()
        assert all(after is not None for after in dropped), dropped
        assert "Traceback" not in server.log(), server.log()


#: An upgrade request without its closing blank line, for a test to add headers to.
UPGRADE_HEAD = upgrade_request(protocols=None)[:-2]


@pytest.mark.parametrize(("framing", "body", "reason"), [
    (b"Content-Length: 5", b"hello", b"(Content-Length '5')"),
    (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n",
     b"(Transfer-Encoding is not allowed)"),
], ids=["content-length", "chunked"])
def test_upgrade_carrying_a_body_is_refused_400_in_one_log_line(
        tmp_path: Path, echo_target: TcpServer, framing: bytes, body: bytes,
        reason: bytes) -> None:
    """An upgrade announcing a body gets 400 with the reason, the server logs one
    line (no traceback) and goes on serving."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        status, head, text = raw_request(server.port, UPGRADE_HEAD + framing + b"\r\n\r\n" + body)
        assert status == 400, head
        assert text == b"a WebSocket upgrade request carries no body " + reason + b"\n"
        echo_roundtrip(server.port)
        server.wait_for_log("handshake refused \\(400\\): a WebSocket upgrade request carries")
        server.stop()
        assert "Traceback" not in server.log(), server.log()


def test_upgraded_connection_is_not_subject_to_the_handshake_timeout(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """A WebSocket idle for longer than --handshake-timeout after its upgrade stays up."""
    with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, ws_connect(server.port) as ws:
        time.sleep(1.8)  # the passing of time is the point of the test
        ws.send(b"still here")
        assert recv_bytes(ws, 10) == b"still here"


def test_max_connections_answers_503_beyond_the_limit(tmp_path: Path,
                                                      echo_target: TcpServer) -> None:
    """With --max-connections 5, five WebSockets are open, the sixth gets HTTP 503
    and a close; once one of the five leaves, a new client is admitted again."""
    with websockify(tmp_path, "--max-connections", "5", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        held: list[socket.socket] = []
        try:
            for _ in range(5):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
                held.append(sock)
                assert http_status(upgrade(sock)) == 101
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sixth:
                head = upgrade(sixth)
                assert http_status(head) == 503, head
                assert_tcp_closed_after_response(sixth)
            # the five are still fully working
            for index, sock in enumerate(held):
                sock.sendall(client_frame(OP_BINARY, b"conn%d" % index))
                opcode, _, payload = FrameReader(sock).read_frame()
                assert (opcode, payload) == (OP_BINARY, b"conn%d" % index)
            send_close(held[0])
            expect_close(held[0])
            held.pop(0).close()

            def admitted() -> bool:
                with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
                    return http_status(upgrade(s)) == 101

            wait_until(admitted, "a free slot after one of the five closed")
        finally:
            for sock in held:
                sock.close()


def test_message_over_max_message_size_gets_1009(tmp_path: Path, echo_target: TcpServer) -> None:
    """--max-message-size 1000: exactly 1000 bytes pass; 1001 in one frame, 1200 in
    two fragments, or a frame announcing 2**40 bytes each get Close 1009."""
    with websockify(tmp_path, "--max-message-size", "1000", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        def connect() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            assert http_status(upgrade(sock)) == 101
            return sock

        with connect() as sock:
            sock.sendall(client_frame(OP_BINARY, b"m", fin=False)
                         + client_frame(OP_CONT, b"m" * 999))
            reader = FrameReader(sock)
            data = bytearray()
            while len(data) < 1000:
                data += reader.read_frame()[2]
            assert bytes(data) == b"m" * 1000

        oversized = {
            "one frame of 1001": client_frame(OP_BINARY, b"x" * 1001),
            "two fragments of 600": client_frame(OP_BINARY, b"x" * 600, fin=False)
            + client_frame(OP_CONT, b"x" * 600),
            "header announcing 2**40": bytes([0x80 | OP_BINARY, 0x80 | 127])
            + struct.pack("!Q", 1 << 40) + b"\x01\x02\x03\x04",
        }
        for label, wire in oversized.items():
            with connect() as sock:
                sock.sendall(wire)
                result = expect_close(sock)
                assert result.code == 1009, f"{label}: got {result.code}"
                assert_tcp_closed(sock)
        echo_roundtrip(server.port, b"y" * 1000)


def test_default_max_message_size_is_16_mib(tmp_path: Path, echo_target: TcpServer) -> None:
    """Without the option a message of 16 MiB + 1 byte gets Close 1009."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        assert http_status(upgrade(sock)) == 101
        sender = send_in_background(sock, client_frame(OP_BINARY, bytes(16 * 1024 * 1024 + 1)))
        result = expect_close(sock)
        assert result.code == 1009, result.code
        sender.join(TIMEOUT)


def test_hundreds_of_connections_leave_no_file_descriptor_behind(tmp_path: Path) -> None:
    """300 connections — clean closes, abrupt resets mid-frame, half handshakes,
    plain GETs — and afterwards the server holds as many fds as before and every
    target connection it opened has been closed."""
    target = RecordingTarget()
    try:
        with websockify(tmp_path, "--handshake-timeout", "1", "127.0.0.1:0",
                        f"127.0.0.1:{target.port}") as server:
            echo_roundtrip(server.port)  # warm up lazily created fds
            pid = server.proc.pid
            wait_until(lambda: target.peers[0].eof.is_set(), "the warm-up target to close")
            baseline = fd_count(pid)

            def one(index: int) -> None:
                kind = index % 5
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
                if kind == 3:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a handshake
                    abort(sock)
                    return
                if kind == 4:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    read_http_head(sock)
                    sock.close()
                    return
                assert http_status(upgrade(sock)) == 101
                sock.sendall(client_frame(OP_BINARY, b"ping %d" % index))
                if kind == 0:
                    FrameReader(sock).read_frame()
                    send_close(sock)
                    expect_close(sock)
                    sock.close()
                elif kind == 1:
                    # reset in the middle of a frame: header says 1000, 10 sent
                    sock.sendall(client_frame(OP_BINARY, b"z" * 1000)[:18])
                    abort(sock)
                else:
                    abort(sock)

            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(one, range(300)))

            wait_until(lambda: fd_count(pid) <= baseline,
                       f"fd count back to {baseline} (now {fd_count(pid)})")
            wait_until(lambda: all(peer.eof.is_set() for peer in list(target.peers)),
                       "every target connection to be closed")
            assert len(target.peers) >= 1 + 60  # at least the clean (kind 0) ones
            echo_roundtrip(server.port)
    finally:
        target.close()



def test_clients_resetting_mid_request_or_mid_frame_log_no_traceback(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """A client vanishing (TCP reset) in the middle of its request or of a frame is
    the client's doing: the server logs it briefly, without a Python traceback."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        abort(sock)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        assert http_status(upgrade(sock)) == 101
        sock.sendall(client_frame(OP_BINARY, b"z" * 1000)[:18])
        abort(sock)
        echo_roundtrip(server.port)  # the server has handled the three by now
        server.stop()
        assert "Traceback" not in server.log(), server.log()
