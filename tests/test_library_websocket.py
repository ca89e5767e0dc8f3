"""websockify.websocket.WebSocket on a real socket pair: upstream's socket-like contract.

The peer end is driven with the raw RFC 6455 client pieces of tests.support, so
the class is checked against the RFC, not against its own codec.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TIMEOUT,
    FrameReader,
    client_frame,
    read_http_head,
)
from websockify.errors import HandshakeError
from websockify.websocket import WebSocket, WebSocketWantReadError, WebSocketWantWriteError

HEADERS = {"Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def pair() -> Iterator[tuple[WebSocket, socket.socket]]:
    server_side, client_side = socket.socketpair()
    client_side.settimeout(TIMEOUT)
    ws = WebSocket()
    ws.accept(server_side, HEADERS)
    head = read_http_head(client_side)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    yield ws, client_side
    client_side.close()
    ws.close()


def test_messages_both_ways_and_would_block(pair: tuple[WebSocket, socket.socket]) -> None:
    ws, client = pair
    ws.setblocking(False)
    with pytest.raises(WebSocketWantReadError):
        ws.recv()
    client.sendall(client_frame(OP_BINARY, b"hello") + client_frame(OP_BINARY, b" world"))
    received = b""
    while len(received) < 11:
        try:
            received += ws.recv() or b""
        except WebSocketWantReadError:
            continue
    assert received == b"hello world"
    assert ws.sendmsg(b"back") == 4
    assert FrameReader(client).read_frame() == (OP_BINARY, True, b"back")


def test_a_full_socket_raises_want_write_and_the_retry_completes(
        pair: tuple[WebSocket, socket.socket]) -> None:
    ws, client = pair
    ws.setblocking(False)
    message = os.urandom(4 << 20)  # more than the socket pair buffers
    with pytest.raises(WebSocketWantWriteError):
        ws.sendmsg(message)
    with pytest.raises(ValueError):
        ws.sendmsg(b"another message first")
    reader = FrameReader(client)
    done = False
    frame_bytes = bytearray()
    while not done:
        frame_bytes += client.recv(1 << 20)  # make room, then retry with the same message
        try:
            ws.sendmsg(message)
            done = True
        except WebSocketWantWriteError:
            continue
    reader.buf = frame_bytes
    assert reader.read_frame() == (OP_BINARY, True, message)


def test_ping_is_answered_and_close_is_echoed(pair: tuple[WebSocket, socket.socket]) -> None:
    ws, client = pair
    client.sendall(client_frame(OP_PING, b"are you there"))
    with pytest.raises(WebSocketWantReadError):  # a read that carried only a ping
        ws.recv()
    reader = FrameReader(client)
    assert reader.read_frame() == (OP_PONG, True, b"are you there")
    client.sendall(client_frame(OP_CLOSE, struct.pack("!H", 4000) + b"bye"))
    assert ws.recv() is None
    assert (ws.close_code, ws.close_reason) == (4000, "bye")
    opcode, _, payload = reader.read_frame()
    assert (opcode, payload[:2]) == (OP_CLOSE, struct.pack("!H", 4000))


def test_a_protocol_violation_closes_with_its_code(pair: tuple[WebSocket, socket.socket]) -> None:
    ws, client = pair
    client.sendall(client_frame(OP_BINARY, b"fine") + client_frame(OP_BINARY, b"x", mask=None))
    assert ws.recv() == b"fine"  # what came before the violation is still delivered
    assert ws.recv() is None
    assert ws.close_code == 1002
    opcode, _, payload = FrameReader(client).read_frame()
    assert (opcode, payload[:2]) == (OP_CLOSE, struct.pack("!H", 1002))


def test_peer_vanishing_is_1006(pair: tuple[WebSocket, socket.socket]) -> None:
    ws, client = pair
    client.close()
    assert ws.recv() is None
    assert ws.close_code == 1006


def test_subprotocol_is_the_subclasses_choice() -> None:
    class Chat(WebSocket):
        def select_subprotocol(self, protocols: list[str]) -> str:
            return "chat" if "chat" in protocols else ""

    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        ws = Chat()
        ws.accept(server_side, {**HEADERS, "Sec-WebSocket-Protocol": "superchat, chat"})
        assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in read_http_head(client_side)
        with pytest.raises(HandshakeError):
            Chat().accept(server_side, {**HEADERS, "Sec-WebSocket-Protocol": "superchat"})
