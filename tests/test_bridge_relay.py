"""End to end: the bridge relays every byte, in order, both ways.

A real websockify subprocess sits between python-websockets clients (or raw
sockets) and real TCP targets; each test proves what a user would see.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.typing import Subprotocol

from tests.bridge_support import FloodTarget, RecordingTarget, recv_bytes, rss_kib, ws_connect
from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    TIMEOUT,
    FrameReader,
    TcpServer,
    assert_tcp_closed,
    http_status,
    send_close,
    upgrade,
    websockify,
)

MiB = 1024 * 1024


@pytest.fixture
def recording_target() -> Iterator[RecordingTarget]:
    target = RecordingTarget()
    yield target
    target.close()


def test_binary_messages_are_echoed_through_the_bridge(tmp_path: Path,
                                                      echo_target: TcpServer) -> None:
    """A python-websockets client talking to a TCP echo server gets its bytes back."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port) as ws:
        assert ws.subprotocol == "binary"
        for payload in (b"hello", bytes(range(256)), os.urandom(1000)):
            ws.send(payload)
            assert recv_bytes(ws, len(payload)) == payload


def test_default_python_websockets_client_works(tmp_path: Path, echo_target: TcpServer) -> None:
    """The stock client (which offers permessage-deflate) connects and relays:
    the server declines the extension instead of breaking the handshake."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(b"x" * 5000)
        assert recv_bytes(ws, 5000) == b"x" * 5000


def test_eight_mib_in_64_kib_messages_arrive_intact_and_in_order(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """8 MiB of random bytes sent as 128 messages of 64 KiB come back byte for byte
    (sending and receiving concurrently, as a real client does)."""
    data = os.urandom(8 * MiB)
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port) as ws:
        errors: list[BaseException] = []

        def send_all() -> None:
            try:
                for start in range(0, len(data), 64 * 1024):
                    ws.send(data[start:start + 64 * 1024])
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        received = recv_bytes(ws, len(data), timeout=60)
        sender.join(TIMEOUT)
        assert not errors
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


def test_one_four_mib_message_arrives_intact(tmp_path: Path, echo_target: TcpServer) -> None:
    """A single 4 MiB message (under the 16 MiB default limit) is relayed whole."""
    data = os.urandom(4 * MiB)
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port) as ws:
        sender = threading.Thread(target=ws.send, args=(data,), daemon=True)
        sender.start()
        received = recv_bytes(ws, len(data), timeout=60)
        sender.join(TIMEOUT)
        assert received == data


def test_one_byte_and_empty_messages(tmp_path: Path, recording_target: RecordingTarget) -> None:
    """A 1-byte message reaches the target as that byte; an empty message is
    relayed as nothing at all and does not disturb the stream."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{recording_target.port}") as server, \
            ws_connect(server.port) as ws:
        ws.send(b"\x00")
        assert recv_bytes(ws, 1) == b"\x00"
        ws.send(b"")
        ws.send(b"Z")
        assert recv_bytes(ws, 1) == b"Z"
        assert recording_target.peer(0).received() == b"\x00Z"


def test_target_speaks_first(tmp_path: Path) -> None:
    """A target that talks before the client (a VNC banner) reaches the client
    without the client sending anything."""
    target = RecordingTarget(greeting=b"RFB 003.008\n")
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server, \
                ws_connect(server.port) as ws:
            assert recv_bytes(ws, 12) == b"RFB 003.008\n"
            ws.send(b"RFB 003.008\n")
            assert recv_bytes(ws, 12) == b"RFB 003.008\n"
    finally:
        target.close()


def test_text_message_in_binary_mode_reaches_the_target_as_its_utf8_bytes(
        tmp_path: Path, recording_target: RecordingTarget) -> None:
    """With the binary subprotocol a text message is relayed as its UTF-8 bytes."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{recording_target.port}") as server, \
            ws_connect(server.port) as ws:
        ws.send("héllo wörld")
        expected = "héllo wörld".encode()
        assert recv_bytes(ws, len(expected)) == expected
        assert recording_target.peer(0).received() == expected


def test_base64_subprotocol_carries_base64_text_both_ways(
        tmp_path: Path, recording_target: RecordingTarget) -> None:
    """With only "base64" offered, the client sends base64 text, the target gets the
    decoded bytes, and the target's bytes come back as base64 text messages."""
    payload = bytes(range(256)) * 4
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{recording_target.port}") as server, \
            ws_connect(server.port, protocols=["base64"]) as ws:
        assert ws.subprotocol == "base64"
        ws.send(base64.b64encode(payload).decode())
        echoed = bytearray()
        deadline = time.monotonic() + TIMEOUT
        while len(echoed) < len(payload):
            message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            assert isinstance(message, str), "base64 mode must send text messages"
            echoed += base64.b64decode(message, validate=True)
        assert bytes(echoed) == payload
        assert recording_target.peer(0).received() == payload


def test_no_subprotocol_means_binary_frames(tmp_path: Path, echo_target: TcpServer) -> None:
    """A client that offers no subprotocol gets binary messages and no protocol header."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server, \
            ws_connect(server.port, protocols=[]) as ws:
        assert ws.subprotocol is None
        ws.send(b"\xff\x00\xfe")
        assert recv_bytes(ws, 3) == b"\xff\x00\xfe"


def test_two_hundred_concurrent_clients_each_get_their_own_bytes(
        tmp_path: Path, echo_target: TcpServer) -> None:
    """200 clients connected at once each send distinct data and each gets exactly
    its own data back: no mixing, no loss, no starvation."""
    clients = 200

    async def one_client(port: int, index: int) -> bool:
        rng = random.Random(index)
        messages = [rng.randbytes(rng.randint(1, 32 * 1024)) for _ in range(3)]
        async with async_connect(f"ws://127.0.0.1:{port}/", subprotocols=[Subprotocol("binary")],
                                 open_timeout=30, close_timeout=TIMEOUT, max_size=None,
                                 compression=None, ping_interval=None, proxy=None) as ws:
            for message in messages:
                await ws.send(message)
            expected = b"".join(messages)
            received = bytearray()
            while len(received) < len(expected):
                reply = await ws.recv()
                assert isinstance(reply, bytes), "binary mode must send binary messages"
                received += reply
            return bytes(received) == expected

    async def run_all(port: int) -> list[bool]:
        return await asyncio.wait_for(
            asyncio.gather(*(one_client(port, i) for i in range(clients))), 90)

    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        results = asyncio.run(run_all(server.port))
    assert results.count(True) == clients


def test_stalled_reader_does_not_grow_server_memory_and_then_gets_everything(
        tmp_path: Path) -> None:
    """Backpressure: a target floods 200 MiB at a client that reads nothing for 3 s.
    The server's RSS must not grow by 32 MiB or more (it stops reading the target);
    then the client reads and receives all 200 MiB intact, and a Close 1000."""
    flood_size = 200 * MiB
    target = FloodTarget([64 * 1024, flood_size], block=random.Random(7).randbytes(4 * MiB))
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
            # Warm up (imports, buffers, first greenlets) with a small flood read in full.
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as warm:
                assert http_status(upgrade(warm)) == 101
                reader = FrameReader(warm)
                assert reader.expect_close().data == target.block[:64 * 1024]
            pid = server.proc.pid
            before = rss_kib(pid)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            try:
                assert http_status(upgrade(sock)) == 101
                peak = before
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    peak = max(peak, rss_kib(pid))
                    time.sleep(0.05)
                growth_mib = (peak - before) / 1024
                assert growth_mib < 32, f"server RSS grew by {growth_mib:.1f} MiB while stalled"
                assert target.sent[1] < flood_size, "the target was never slowed down"

                digest = hashlib.sha256()
                received = 0
                reader = FrameReader(sock)
                sock.settimeout(TIMEOUT)
                while True:
                    opcode, _, payload = reader.read_frame()
                    if opcode == OP_CLOSE:
                        assert int.from_bytes(payload[:2], "big") == 1000
                        break
                    assert opcode in (OP_BINARY, 0), f"unexpected opcode {opcode}"
                    digest.update(payload)
                    received += len(payload)
                assert received == flood_size
                assert digest.hexdigest() == target.expected_sha256(1)
                send_close(sock)
                assert_tcp_closed(sock)
            finally:
                sock.close()
    finally:
        target.close()
