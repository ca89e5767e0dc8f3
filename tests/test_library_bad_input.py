"""Bad input gets the same answers from the library server as from the gevent server.

Both servers run side by side against one TCP echo target: the command line's
gevent server as a subprocess, upstream's API (WebSocketProxy) in a forked
process.  Each case sends the same raw bytes to both and compares the answers:
HTTP status and the headers a client acts on, or the close code after the upgrade,
and what reached the target before a bad frame.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.bridge_support import RecordingTarget
from tests.library_support import library_proxy
from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    TIMEOUT,
    FrameReader,
    client_frame,
    http_header,
    open_websocket,
    raw_request,
    read_http_head,
    wait_until,
    websockify,
)

MAX_MESSAGE = 4096


@dataclass
class Servers:
    gevent: int
    library: int
    target: RecordingTarget


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    target = RecordingTarget()
    tmp = tmp_path_factory.mktemp("bad-input")
    with websockify(tmp, "--max-message-size", str(MAX_MESSAGE), "127.0.0.1:0",
                    f"127.0.0.1:{target.port}") as gevent_server, \
            library_proxy("fork", target_host="127.0.0.1", target_port=target.port,
                          max_message_size=MAX_MESSAGE) as library_server:
        yield Servers(gevent_server.port, library_server.port, target)
    target.close()


def _key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _request(*lines: str, method: str = "GET", body: bytes = b"") -> bytes:
    head = "\r\n".join([f"{method} / HTTP/1.1", "Host: localhost", *lines]) + "\r\n\r\n"
    return head.encode() + body


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade")
REFUSALS = {
    "unknown version": _request(*UPGRADE, f"Sec-WebSocket-Key: {_key()}",
                                "Sec-WebSocket-Version: 5"),
    "no key": _request(*UPGRADE, "Sec-WebSocket-Version: 13"),
    "short key": _request(*UPGRADE, "Sec-WebSocket-Key: c2hvcnQ=", "Sec-WebSocket-Version: 13"),
    "unknown subprotocol": _request(*UPGRADE, f"Sec-WebSocket-Key: {_key()}",
                                    "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: chat"),
    "no Connection: Upgrade": _request("Upgrade: websocket", f"Sec-WebSocket-Key: {_key()}",
                                       "Sec-WebSocket-Version: 13"),
    "upgrade by POST": _request(*UPGRADE, f"Sec-WebSocket-Key: {_key()}",
                                "Sec-WebSocket-Version: 13", "Content-Length: 0",
                                method="POST"),
    "Hixie-76 with one key": _request(*UPGRADE, "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5"),
    "plain GET without --web": _request(),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_requests_get_the_same_answer(servers: Servers, case: str) -> None:
    answers = []
    for port in (servers.gevent, servers.library):
        status, head, _ = raw_request(port, REFUSALS[case])
        answers.append((status, http_header(head, "Sec-WebSocket-Version")))
    assert answers[0] == answers[1], f"gevent answered {answers[0]}, library {answers[1]}"
    assert 400 <= answers[0][0] < 500


def _binary(payload: bytes, **kwargs: object) -> bytes:
    return client_frame(OP_BINARY, payload, **kwargs)  # type: ignore[arg-type]


FRAME_VIOLATIONS = {
    "unmasked frame": (_binary(b"clear", mask=None), 1002),
    "reserved bit": (_binary(b"rsv", rsv=4), 1002),
    "continuation without a start": (client_frame(OP_CONT, b"orphan"), 1002),
    "fragmented ping": (client_frame(OP_PING, b"p", fin=False), 1002),
    "invalid close code": (client_frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
    "text that is not UTF-8": (client_frame(OP_TEXT, b"\xff\xfe"), 1007),
    "message over the limit": (_binary(b"x" * (MAX_MESSAGE + 1)), 1009),
    "unknown opcode": (client_frame(0x3, b"?"), 1002),
}


@pytest.mark.parametrize("case", sorted(FRAME_VIOLATIONS))
def test_frame_violations_get_the_same_close_code(servers: Servers, case: str) -> None:
    bad_frame, expected = FRAME_VIOLATIONS[case]
    results = []
    for index, port in enumerate((servers.gevent, servers.library)):
        marker = f"{case} {index} ".encode()
        sock, head = open_websocket(port)
        with sock:
            assert head.startswith(b"HTTP/1.1 101"), head
            sock.sendall(_binary(marker) + bad_frame)  # good bytes, then the violation
            closed = FrameReader(sock).expect_close()
        results.append(closed.code)
        # The good frame before the bad one reached the target.
        wait_until(lambda marker=marker: any(marker in peer.received()
                                             for peer in servers.target.peers),
                   f"{marker!r} at the target")
    assert results == [expected, expected]


def test_frames_sent_with_the_handshake_are_relayed(servers: Servers) -> None:
    for port in (servers.gevent, servers.library):
        key = _key()
        request = _request(*UPGRADE, f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                           "Sec-WebSocket-Protocol: binary")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(request + _binary(b"early bird"))  # one segment
            assert read_http_head(sock).startswith(b"HTTP/1.1 101")
            opcode, _, payload = FrameReader(sock).read_frame()
            assert (opcode, payload) == (OP_BINARY, b"early bird")


def test_base64_and_hixie_clients_are_served_alike(servers: Servers) -> None:
    hixie = _request("Upgrade: WebSocket", "Connection: Upgrade", "Origin: http://localhost",
                     "Sec-WebSocket-Key1: 18x 6]8vM;54 *(5:  {   U1]8  z [  8",
                     "Sec-WebSocket-Key2: 1_ tx7X d  <  nw  334J702) 7]o}` 0",
                     body=b"Tm[K T2u")
    heads = []
    for port in (servers.gevent, servers.library):
        sock, head = open_websocket(port, protocols="base64")
        with sock:
            sock.sendall(client_frame(OP_TEXT, base64.b64encode(b"base64 both ways")))
            opcode, _, payload = FrameReader(sock).read_frame()
            assert (opcode, base64.b64decode(payload)) == (OP_TEXT, b"base64 both ways")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(hixie)
            head = read_http_head(sock)
            answer = sock.recv(16)
            sock.sendall(b"\x00" + base64.b64encode(b"hixie") + b"\xff")
            echoed = sock.recv(64)
        heads.append((head.split(b"\r\n")[0], answer, echoed))
    assert heads[0] == heads[1]
    assert heads[0][0] == b"HTTP/1.1 101 WebSocket Protocol Handshake"
    assert heads[0][2] == b"\x00" + base64.b64encode(b"hixie") + b"\xff"
