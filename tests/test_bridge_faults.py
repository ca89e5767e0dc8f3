"""End to end: the faults of the relay that only real sockets show.

Each test failed on the relay before the connection state machine: a ping flood
read without bound, tails of streams lost to resets at close, live clients closed
by the heartbeat, clients that left unnoticed behind a stalled target, and the
shared read buffer (bytes waiting for a slow client must be copied out of it).
"""

from __future__ import annotations

import hashlib
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_support import abort, echo_roundtrip, rss_kib, wait_exit
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
    echo,
    raw_client,
    send_close,
    wait_until,
    websockify,
)

KiB = 1024
MiB = 1024 * KiB


class SlowTarget:
    """A target that reads nothing until ``release()``, then everything until EOF.

    It records a digest of what each connection sent it; ``chatty`` makes it also
    write to the relay without pause, as a target streaming output does.
    """

    def __init__(self, unix_path: Path | None = None, chatty: bool = False,
                 read_delay: float = 0.0) -> None:
        self.released = threading.Event()
        self.chatty = chatty
        self.read_delay = read_delay
        self.received: list[tuple[int, str]] = []
        self.done = threading.Event()
        self._server = TcpServer(self._serve, unix_path=unix_path)
        if unix_path is None:
            self._server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)
        self.port = self._server.port

    def release(self) -> None:
        self.released.set()

    def _chatter(self, conn: socket.socket) -> None:
        noise = random.Random(1).randbytes(64 * KiB)
        try:
            while not self.done.is_set():
                conn.sendall(noise)
        except OSError:
            pass

    def _serve(self, conn: socket.socket) -> None:
        if self.chatty:
            threading.Thread(target=self._chatter, args=(conn,), daemon=True).start()
        self.released.wait(TIMEOUT * 3)
        digest = hashlib.sha256()
        total = 0
        try:
            while chunk := conn.recv(16 * KiB):
                digest.update(chunk)
                total += len(chunk)
                if self.read_delay:
                    time.sleep(self.read_delay)
        finally:
            self.received.append((total, digest.hexdigest()))
            self.done.set()

    def close(self) -> None:
        self.release()
        self.done.set()
        self._server.close()


@pytest.fixture
def slow_target() -> Iterator[SlowTarget]:
    target = SlowTarget()
    yield target
    target.close()


def send_until_blocked(sock: socket.socket, frame: bytes, limit: int) -> int:
    """Send ``frame`` again and again until the socket stays unwritable for 1 s
    (the server stopped reading); returns the bytes sent, or fails past ``limit``."""
    sent = 0
    view = memoryview(frame)
    offset = 0
    while sent < limit:
        _, writable, _ = select.select([], [sock], [], 1.0)
        if not writable:
            return sent
        try:
            count = sock.send(view[offset:], socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        sent += count
        offset = (offset + count) % len(frame)
    raise AssertionError(f"the server read {sent} bytes and was still reading")


# -- a ping flood is not read faster than its pongs are taken -------------------------------


def test_a_client_that_pings_without_reading_stops_being_read(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """Pings as fast as the socket takes them, never reading the pongs: the server stops
    reading this client once its pongs wait (bounded memory) and serves everyone else."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        echo_roundtrip(server.port)  # warm up before measuring memory
        before = rss_kib(server.proc.pid)
        sock = raw_client(server.port, rcvbuf=16 * KiB)
        try:
            sent = send_until_blocked(sock, client_frame(OP_PING, b"p" * 125), 256 * MiB)
            growth = (rss_kib(server.proc.pid) - before) / 1024
            assert growth < 48, f"server RSS grew by {growth:.0f} MiB ({sent} bytes of pings)"
            echo_roundtrip(server.port)
            # The pongs are all there, in order, when the client reads them at last.
            sock.settimeout(TIMEOUT)
            reader = FrameReader(sock)
            for _ in range(100):
                assert reader.read_frame() == (OP_PONG, True, b"p" * 125)
        finally:
            abort(sock)


# -- no tail is lost at close ---------------------------------------------------------------


def serve_then_end(payload: bytes) -> TcpServer:
    """A target that sends ``payload``, ends its side, and reads until the relay's EOF."""
    def serve(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    return TcpServer(serve)


def test_a_client_reading_slowly_gets_the_whole_tail_and_the_close(tmp_path: Path) -> None:
    """The target sends 384 KiB and ends; the client reads 16 KiB per 0.125 s (about
    3 s in all, past the close timeout) and sends a small frame now and then.  It gets
    every byte and Close 1000; the log counts exactly what it got."""
    payload = random.Random(3).randbytes(384 * KiB)
    target = serve_then_end(payload)
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
            sock = raw_client(server.port, rcvbuf=16 * KiB)
            wire = bytearray()
            close_frame = b"\x88\x02\x03\xe8"
            deadline = time.monotonic() + TIMEOUT * 2
            while not (len(wire) > len(payload) and wire.endswith(close_frame)):
                assert time.monotonic() < deadline, f"only {len(wire)} bytes arrived"
                chunk = sock.recv(16 * KiB)
                assert chunk, f"EOF after {len(wire)} bytes, before the Close"
                wire += chunk
                sock.sendall(client_frame(OP_BINARY, b"tick"))
                time.sleep(0.125)
            reader = FrameReader(sock)
            reader.buf = wire
            result = reader.expect_close()
            assert result.code == 1000
            assert hashlib.sha256(result.data).digest() == hashlib.sha256(payload).digest()
            send_close(sock)
            assert_tcp_closed(sock)
            sock.close()
            server.wait_for_log(rf"target closed the connection \(close 1000; \d+ bytes to "
                                rf"target, {len(payload)} to client\)")
    finally:
        target.close()


def test_a_chatty_target_gets_the_whole_upload_before_the_close(tmp_path: Path) -> None:
    """The client uploads 2 MiB and sends Close; the target writes without pause and
    reads slowly.  The target still receives all 2 MiB, then EOF (no reset)."""
    upload = random.Random(4).randbytes(2 * MiB)
    target = SlowTarget(chatty=True, read_delay=0.002)
    target.release()
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
            sock = raw_client(server.port)
            frames = b"".join(client_frame(OP_BINARY, upload[start:start + 64 * KiB])
                              for start in range(0, len(upload), 64 * KiB))
            sender = threading.Thread(
                target=lambda: sock.sendall(frames + client_frame(OP_CLOSE, b"\x03\xe8")),
                daemon=True)
            sender.start()
            reader = FrameReader(sock)
            assert reader.expect_close().code == 1000
            sender.join(TIMEOUT)
            assert_tcp_closed(sock, timeout=TIMEOUT * 2)
            sock.close()
            wait_until(lambda: target.received, "the target's EOF", TIMEOUT * 2)
            assert target.received == [(len(upload), hashlib.sha256(upload).hexdigest())]
            server.wait_for_log(rf"client sent Close 1000 \(close 1000; {len(upload)} bytes "
                                r"to target")
    finally:
        target.close()


# -- a stalled target: heartbeat and clients that leave ---------------------------------


def test_heartbeat_does_not_close_a_client_that_the_relay_does_not_read(
        tmp_path: Path, slow_target: SlowTarget) -> None:
    """--heartbeat 1 and a target that stopped reading: the client's upload waits, and
    so do its pongs.  It is not closed; once the target reads, all of it arrives."""
    upload = random.Random(5).randbytes(4 * MiB)
    with websockify(tmp_path, "--heartbeat", "1", "127.0.0.1:0",
                    f"127.0.0.1:{slow_target.port}") as server:
        sock = raw_client(server.port)
        frames = [client_frame(OP_BINARY, upload[start:start + 64 * KiB])
                  for start in range(0, len(upload), 64 * KiB)]
        pongs: list[bytes] = []
        lock = threading.Lock()

        def send() -> None:  # the upload, with the pongs between its frames
            for frame in frames:
                with lock:
                    waiting = b"".join(pongs)
                    pongs.clear()
                sock.sendall(waiting + frame)
            sock.sendall(client_frame(OP_CLOSE, b"\x03\xe8"))

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        reader = FrameReader(sock)
        quiet_until = time.monotonic() + 2.5  # two heartbeats pass while nothing moves
        while (left := quiet_until - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                opcode, _, payload = reader.read_frame()
            except TimeoutError:
                break
            assert opcode == OP_PING, f"opcode {opcode:#x}: {payload!r}"
            with lock:
                pongs.append(client_frame(OP_PONG, payload))
        sock.settimeout(TIMEOUT)
        slow_target.release()
        result = reader.expect_close()
        assert result.code == 1000, result
        sender.join(TIMEOUT)
        wait_until(lambda: slow_target.received, "the target's EOF")
        assert slow_target.received == [(len(upload), hashlib.sha256(upload).hexdigest())]
        assert "no pong" not in server.log()
        sock.close()


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_a_client_that_leaves_behind_a_stalled_target_is_noticed(
        tmp_path: Path, how: str) -> None:
    """The target stopped reading and the relay waits to write to it; the client leaves
    (a reset, or FIN after all its bytes reached the server).  The relay notices, ends,
    and --idle-timeout then stops the server."""
    socket_path = tmp_path / "target.sock"
    target = SlowTarget(unix_path=socket_path)
    try:
        with websockify(tmp_path, "--idle-timeout", "1", "--unix-target", str(socket_path),
                        "127.0.0.1:0") as server:
            sock = raw_client(server.port)
            if how == "reset":
                send_until_blocked(sock, client_frame(OP_BINARY, bytes(64 * KiB)), 1024 * MiB)
                abort(sock)
                ending = "client connection lost"
            else:
                # More than the unix socket to the target holds, less than it plus
                # one read of the relay: every byte leaves the client, FIN follows.
                sock.sendall(client_frame(OP_BINARY, bytes(320 * KiB)))
                sock.shutdown(socket.SHUT_WR)
                ending = "client hung up without a Close"
            server.wait_for_log(ending, what="the relay's end", timeout=TIMEOUT * 2)
            assert wait_exit(server.proc, TIMEOUT * 2) == 0
            sock.close()
    finally:
        target.close()


# -- the shared read buffer -----------------------------------------------------------------


def test_slow_and_fast_clients_at_once_each_get_exactly_their_bytes(tmp_path: Path) -> None:
    """Every relay of the process reads into one buffer; bytes waiting for a slow client
    must be copied out of it before another connection reads.  16 clients echo 6 MiB
    each at once (more than the kernel buffers between the server and a client), half
    of them reading slowly: every byte comes back unchanged."""
    target = TcpServer(echo)
    errors: list[str] = []

    def client(port: int, index: int) -> None:
        data = random.Random(index).randbytes(6 * MiB)
        slow = index % 2 == 0
        try:
            sock = raw_client(port, rcvbuf=8 * KiB if slow else 0)
            sock.settimeout(TIMEOUT * 3)
            frames = b"".join(client_frame(OP_BINARY, data[start:start + 64 * KiB])
                              for start in range(0, len(data), 64 * KiB))
            sender = threading.Thread(target=sock.sendall, args=(frames,), daemon=True)
            sender.start()
            reader = FrameReader(sock)
            received = bytearray()
            while len(received) < len(data):
                opcode, _, payload = reader.read_frame()
                assert opcode == OP_BINARY
                received += payload
                if slow:
                    time.sleep(0.002)
            if received != data:
                errors.append(f"client {index} got other bytes")
            send_close(sock)
            sock.close()
        except (OSError, AssertionError) as error:
            errors.append(f"client {index}: {error!r}")

    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
            threads = [threading.Thread(target=client, args=(server.port, index), daemon=True)
                       for index in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT * 6)
            assert not errors, errors
            assert not any(thread.is_alive() for thread in threads)
    finally:
        target.close()
