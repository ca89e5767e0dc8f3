"""Hixie-76 and Hixie-75 clients on raw sockets against a real websockify process.

The clients are written from the drafts, not from our codec: they build their keys
as draft-76 section 4.1 tells a browser to, check the server's 16-byte answer with
numbers they chose themselves, and frame base64 text by hand.  Every server sits in
front of a real TCP echo target, so a payload that comes back byte-identical went
through the whole relay in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.support import (
    TIMEOUT,
    TcpServer,
    Websockify,
    echo,
    read_http_head,
    recv_exact,
    wait_until,
    websockify,
)

#: Characters draft-76 has a client scatter through its keys: U+0021-U+002F, U+003A-U+007E.
KEY_NOISE = [chr(c) for c in range(0x21, 0x30)] + [chr(c) for c in range(0x3A, 0x7F)]
SIZES = [0, 1, 3, 4, 65535, 1 << 20]
STRICT_MAX_MESSAGE = 4096
STRICT_HANDSHAKE_TIMEOUT = 1.0


def make_key(rng: random.Random) -> tuple[str, int]:
    """A Sec-WebSocket-Key1/2 made as draft-76 section 4.1 says; returns (key, its part)."""
    spaces = rng.randint(1, 12)
    part = rng.randint(0, 0xFFFFFFFF // spaces)
    chars = list(str(part * spaces))
    for _ in range(rng.randint(1, 12)):
        chars.insert(rng.randint(0, len(chars)), rng.choice(KEY_NOISE))
    for _ in range(spaces):
        chars.insert(rng.randint(1, len(chars) - 1), " ")
    return "".join(chars), part


class HixieClient:
    """One Hixie connection: the handshake on construction, then base64 text frames.

    ``byte_writes`` sends the request one byte per write; ``body_split`` sends that
    many bytes of the 8-byte body with the headers and the rest ``body_delay`` later;
    ``first_frames`` go in the same write as the end of the handshake.
    """

    def __init__(self, port: int, draft: int = 76, *, protocol: str | None = None,
                 key1: str | None = None, send_body: bool = True, byte_writes: bool = False,
                 body_split: int = 8, body_delay: float = 0.0, first_frames: bytes = b"",
                 path: str = "/websockify?token=x", tls: ssl.SSLContext | None = None) -> None:
        rng = random.Random()
        lines = [f"GET {path} HTTP/1.1", "Upgrade: WebSocket", "Connection: Upgrade",
                 f"Host: 127.0.0.1:{port}", "Origin: http://origin.example"]
        body = b""
        self.expected_answer = b""
        if draft == 76:
            (key1_made, part1), (key2, part2) = make_key(rng), make_key(rng)
            lines += [f"Sec-WebSocket-Key1: {key1 or key1_made}", f"Sec-WebSocket-Key2: {key2}"]
            body = os.urandom(8) if send_body else b""
            self.expected_answer = hashlib.md5(struct.pack(">II", part1, part2) + body).digest()
        if protocol is not None:
            lines.append(f"{'Sec-' if draft == 76 else ''}WebSocket-Protocol: {protocol}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()

        self.draft = draft
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self._buffer = bytearray()
        first = head + body[:body_split]
        if byte_writes:
            for i in range(len(first)):
                self.sock.sendall(first[i:i + 1])
                time.sleep(0.001)
        else:
            self.sock.sendall(first)
        if body_split < len(body):
            time.sleep(body_delay)
            self.sock.sendall(body[body_split:] + first_frames)
        elif first_frames:
            self.sock.sendall(first_frames)
        self.head = read_http_head(self.sock)
        self.answer = recv_exact(self.sock, 16) if draft == 76 and self.upgraded else b""

    @property
    def upgraded(self) -> bool:
        return self.head.startswith(b"HTTP/1.1 101 ")

    def header(self, name: str) -> str | None:
        match = re.search(rf"\r\n{re.escape(name)}: ([^\r]*)\r\n", self.head.decode("latin-1"))
        return match.group(1) if match else None

    def send(self, wire: bytes) -> None:
        self.sock.sendall(wire)

    def read_payload(self, size: int) -> bytes:
        """Read frames until ``size`` decoded bytes came back."""
        data = bytearray()
        while len(data) < size:
            data += self._next_frame()
        return bytes(data)

    def _next_frame(self) -> bytes:
        scanned = 0
        while True:
            if self._buffer:
                assert self._buffer[0] == 0x00, f"frame type 0x{self._buffer[0]:02x} from server"
                end = self._buffer.find(b"\xff", max(scanned, 1))
                if end > 0:
                    text = bytes(self._buffer[1:end])
                    del self._buffer[:end + 1]
                    return base64.b64decode(text, validate=True)
                scanned = len(self._buffer)
            self._recv_more()

    def _recv_more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError(f"server hung up; unparsed: {bytes(self._buffer[:40])!r}")
        self._buffer += chunk

    def expect_close(self) -> None:
        """The server sends the close frame (after any data frames), then hangs up."""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            self._buffer += chunk
        assert self._buffer.endswith(b"\xff\x00"), f"no close frame: {bytes(self._buffer[-40:])!r}"

    def close(self) -> None:
        self.sock.close()


def frame(payload: bytes) -> bytes:
    return b"\x00" + base64.b64encode(payload) + b"\xff"


def echo_through(client: HixieClient, payload: bytes) -> bytes:
    """Send ``payload`` and a marker while reading, so large payloads cannot deadlock."""
    wire = frame(payload) + frame(b"end")
    sender = threading.Thread(target=client.send, args=(wire,), daemon=True)
    sender.start()
    received = client.read_payload(len(payload) + 3)
    sender.join(TIMEOUT)
    assert received[-3:] == b"end"
    return received[:-3]


def assert_hybi_served(port: int) -> None:
    """A python-websockets client (subprotocol "binary") still gets a working relay."""
    payload = os.urandom(1000)
    with connect(f"ws://127.0.0.1:{port}/", subprotocols=[Subprotocol("binary")],
                 open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == "binary"
        ws.send(payload)
        received = b""
        while len(received) < len(payload):
            message = ws.recv(timeout=TIMEOUT)
            assert isinstance(message, bytes)
            received += message
    assert received == payload


def start_server(tmp_path: Path, target: TcpServer, *options: str) -> Websockify:
    return Websockify([*options, "127.0.0.1:0", f"127.0.0.1:{target.port}"],
                      tmp_path / "websockify.log")


@pytest.fixture(scope="module")
def module_target() -> Iterator[TcpServer]:
    target = TcpServer(echo)
    yield target
    target.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           module_target: TcpServer) -> Iterator[Websockify]:
    """websockify with its defaults, shared by the tests that expect success."""
    process = start_server(tmp_path_factory.mktemp("hixie"), module_target)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory,
                  module_target: TcpServer) -> Iterator[Websockify]:
    """Small limits, so the oversized frame and the handshake timeout come quickly."""
    process = start_server(tmp_path_factory.mktemp("hixie-strict"), module_target,
                           "--max-message-size", str(STRICT_MAX_MESSAGE),
                           "--handshake-timeout", str(STRICT_HANDSHAKE_TIMEOUT))
    yield process
    process.stop()


# ---------------------------------------------------------------- handshakes


def test_hixie76_handshake(server: Websockify) -> None:
    client = HixieClient(server.port, 76)
    try:
        assert client.head.startswith(b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n")
        assert client.header("Upgrade") == "WebSocket"
        assert client.header("Connection") == "Upgrade"
        assert client.header("Sec-WebSocket-Origin") == "http://origin.example"
        assert client.header("Sec-WebSocket-Location") == (
            f"ws://127.0.0.1:{server.port}/websockify?token=x"
        )
        assert client.header("Sec-WebSocket-Protocol") is None
        assert client.answer == client.expected_answer
    finally:
        client.close()


def test_hixie75_handshake(server: Websockify) -> None:
    client = HixieClient(server.port, 75)
    try:
        assert client.head.startswith(
            b"HTTP/1.1 101 Web Socket Protocol Handshake\r\n"
            b"Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
        )
        assert client.header("WebSocket-Origin") == "http://origin.example"
        assert client.header("WebSocket-Location") == (
            f"ws://127.0.0.1:{server.port}/websockify?token=x"
        )
    finally:
        client.close()


@pytest.mark.parametrize(("draft", "header"), [(76, "Sec-WebSocket-Protocol"),
                                               (75, "WebSocket-Protocol")])
@pytest.mark.parametrize("protocol", ["binary", "base64"])
def test_offered_protocol_is_echoed_and_payloads_stay_base64(
    server: Websockify, draft: int, header: str, protocol: str
) -> None:
    client = HixieClient(server.port, draft, protocol=protocol)
    try:
        assert client.header(header) == protocol
        payload = bytes(range(256))
        assert echo_through(client, payload) == payload
    finally:
        client.close()


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("draft", [76, 75])
def test_random_payload_echoes_byte_identical(server: Websockify, draft: int, size: int) -> None:
    client = HixieClient(server.port, draft)
    try:
        assert client.upgraded, client.head
        payload = os.urandom(size)
        assert echo_through(client, payload) == payload
    finally:
        client.close()


@pytest.mark.parametrize("draft", [76, 75])
def test_request_in_one_byte_writes(server: Websockify, draft: int) -> None:
    client = HixieClient(server.port, draft, byte_writes=True)
    try:
        assert client.upgraded, client.head
        assert client.answer == client.expected_answer
        assert echo_through(client, b"\x00\xff\x01") == b"\x00\xff\x01"
    finally:
        client.close()


@pytest.mark.parametrize("body_split", [0, 1, 4, 7])
def test_body_sent_late(server: Websockify, body_split: int) -> None:
    """Headers (with part of the body or none), then the rest of the body 0.3 s later."""
    client = HixieClient(server.port, 76, body_split=body_split, body_delay=0.3,
                         first_frames=frame(b"first"))
    try:
        assert client.upgraded, client.head
        assert client.answer == client.expected_answer
        assert client.read_payload(5) == b"first"
    finally:
        client.close()


@pytest.mark.parametrize("draft", [76, 75])
def test_frames_in_the_same_write_as_the_handshake_are_not_lost(
    server: Websockify, draft: int
) -> None:
    client = HixieClient(server.port, draft, first_frames=frame(b"one") + frame(b"two"))
    try:
        assert client.upgraded, client.head
        assert client.read_payload(6) == b"onetwo"
    finally:
        client.close()


@pytest.mark.parametrize("draft", [76, 75])
def test_close_handshake_is_answered_and_closes_the_target(
    tmp_path: Path, echo_target: TcpServer, draft: int
) -> None:
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as process:
        client = HixieClient(process.port, draft)
        try:
            assert echo_through(client, b"hello") == b"hello"
            client.send(b"\xff\x00")
            client.expect_close()
        finally:
            client.close()
        target_side = echo_target.connections[0]
        wait_until(lambda: target_side.fileno() == -1, "the target connection to be closed")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("key1", "reason"),
    [
        ("12345", "Sec-WebSocket-Key1 has no spaces"),
        ("1  3", "not a multiple of its 2 spaces"),
        ("4294967296 ", "Sec-WebSocket-Key1 is a number over 32 bits"),
    ],
)
def test_malformed_key_is_refused_with_400(strict_server: Websockify, key1: str,
                                           reason: str) -> None:
    bystander = HixieClient(strict_server.port, 76)
    try:
        client = HixieClient(strict_server.port, 76, key1=key1)
        assert client.head.startswith(b"HTTP/1.1 400 "), client.head
        client.close()
        strict_server.wait_for_log(re.escape(reason), what="the refusal in the log")
        assert echo_through(bystander, b"still here") == b"still here"
    finally:
        bystander.close()
    assert_hybi_served(strict_server.port)


def test_body_that_never_arrives_is_refused_after_the_handshake_timeout(
    strict_server: Websockify,
) -> None:
    started = time.monotonic()
    client = HixieClient(strict_server.port, 76, send_body=False)
    elapsed = time.monotonic() - started
    try:
        assert client.head.startswith(b"HTTP/1.1 400 "), client.head
        assert STRICT_HANDSHAKE_TIMEOUT * 0.9 <= elapsed < TIMEOUT
    finally:
        client.close()
    assert_hybi_served(strict_server.port)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x80\x01x", "Hixie frame type 0x80"),
        (b"\x01abc\xff", "Hixie frame type 0x01"),
        (b"\xff\x05", "only 0xff 0x00 (close)"),
        (b"\x00QQ=\xff", "base64"),
        (b"\x00Q!==\xff", "base64"),
        (b"\x00\xc3\x28AA\xff", "not valid UTF-8"),
        (frame(os.urandom(STRICT_MAX_MESSAGE)), "maximum message size"),
    ],
    ids=["type-0x80", "type-0x01", "ff-length", "short-group", "bad-char", "utf8", "too-long"],
)
@pytest.mark.parametrize("draft", [76, 75])
def test_bad_frame_is_closed_and_others_are_served(
    strict_server: Websockify, draft: int, wire: bytes, reason: str
) -> None:
    client = HixieClient(strict_server.port, draft)
    try:
        assert client.upgraded, client.head
        assert echo_through(client, b"before") == b"before"
        client.send(wire)
        client.expect_close()
    finally:
        client.close()
    strict_server.wait_for_log(re.escape(reason), what="the violation in the log")
    assert_hybi_served(strict_server.port)


@pytest.mark.parametrize("draft", [76, 75])
def test_no_hixie_refuses_both_drafts(tmp_path: Path, echo_target: TcpServer,
                                      draft: int) -> None:
    with websockify(tmp_path, "--no-hixie", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as process:
        client = HixieClient(process.port, draft)
        try:
            assert client.head.startswith(b"HTTP/1.1 426 "), client.head
        finally:
            client.close()
        assert_hybi_served(process.port)
