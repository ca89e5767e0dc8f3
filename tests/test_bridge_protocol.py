"""End to end: the RFC 6455 rules as a raw-socket client sees them on the wire.

One websockify subprocess (in front of a recording echo target) serves the whole
module; each test opens its own connection with hand-built frames, so a strict
server and a lenient one give different results here.
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bridge_support import RecordingTarget, echo_roundtrip, refusing_port
from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    FrameReader,
    Websockify,
    accept_value,
    assert_tcp_closed,
    client_frame,
    close_payload,
    expect_close,
    http_header,
    http_status,
    raw_request,
    read_http_head,
    send_close,
    upgrade,
    upgrade_request,
    websockify,
)


@dataclass
class Bridge:
    server: Websockify
    target: RecordingTarget

    def connect(self, protocols: str | None = "binary") -> tuple[socket.socket, int]:
        """A raw upgraded connection and the index of its target-side peer."""
        index = len(self.target.peers)
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=TIMEOUT)
        head = upgrade(sock, protocols=protocols)
        assert http_status(head) == 101, head
        return sock, index


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """One server for the module: for tests that only look at the client side."""
    target = RecordingTarget()
    tmp = tmp_path_factory.mktemp("protocol")
    with websockify(tmp, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
        yield Bridge(server, target)
    target.close()


@pytest.fixture
def fresh_bridge(tmp_path: Path) -> Iterator[Bridge]:
    """A server and target of the test's own, for tests that check the target side.

    With a shared target, a previous test's target connection may still be arriving
    when this test counts them, and ``peer(index)`` would pick the wrong one.
    """
    target = RecordingTarget()
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
        yield Bridge(server, target)
    target.close()


def read_data(reader: FrameReader, size: int) -> tuple[set[int], bytes]:
    """Data frames until ``size`` bytes: (the opcodes seen, the bytes)."""
    opcodes: set[int] = set()
    data = bytearray()
    while len(data) < size:
        opcode, _, payload = reader.read_frame()
        assert opcode in (OP_CONT, OP_TEXT, OP_BINARY), f"unexpected opcode {opcode:#x}"
        opcodes.add(opcode)
        data += payload
    assert len(data) == size
    return opcodes, bytes(data)


# ---------------------------------------------------------------------------
# Handshake

def test_handshake_answers_101_with_the_rfc_accept_value(bridge: Bridge) -> None:
    """The 101 carries Upgrade/Connection headers and the SHA-1 accept of our key."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        head = upgrade(sock, key=key)
    assert http_status(head) == 101, head
    assert http_header(head, "Sec-WebSocket-Accept") == accept_value(key)
    assert accept_value(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert (http_header(head, "Upgrade") or "").lower() == "websocket"
    assert "upgrade" in (http_header(head, "Connection") or "").lower()


@pytest.mark.parametrize(("offer", "chosen"), [
    ("binary", "binary"),
    ("base64", "base64"),
    ("base64, binary", "binary"),
    ("binary,base64", "binary"),
    ("  base64 ,\tbinary  ", "binary"),
    ("chat, base64", "base64"),
    (None, None),
])
def test_subprotocol_choice_and_frame_type(bridge: Bridge, offer: str | None,
                                           chosen: str | None) -> None:
    """binary wins when offered (binary frames), else base64 (text frames with
    base64 both ways); no offer → no protocol header and binary frames."""
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        head = upgrade(sock, protocols=offer)
        assert http_status(head) == 101, head
        assert http_header(head, "Sec-WebSocket-Protocol") == chosen
        reader = FrameReader(sock)
        payload = b"\x00\xffpayload\x80"
        if chosen == "base64":
            sock.sendall(client_frame(OP_TEXT, base64.b64encode(payload)))
            opcodes, text = read_data(reader, len(base64.b64encode(payload)))
            assert opcodes == {OP_TEXT}
            assert base64.b64decode(text, validate=True) == payload
        else:
            sock.sendall(client_frame(OP_BINARY, payload))
            opcodes, data = read_data(reader, len(payload))
            assert opcodes == {OP_BINARY}
            assert data == payload


@pytest.mark.parametrize("offer", ["chat", "superchat, chat", "base64x, binaryy"])
def test_offer_without_binary_or_base64_is_refused_with_400(bridge: Bridge, offer: str) -> None:
    """A client offering only protocols the bridge cannot speak gets 400, not 101."""
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        head = upgrade(sock, protocols=offer)
    assert http_status(head) == 400, head


@pytest.mark.parametrize("version", ["13", "8", "7"])
def test_supported_versions_are_accepted(bridge: Bridge, version: str) -> None:
    """Sec-WebSocket-Version 13, 8 and 7 all upgrade and relay."""
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        head = upgrade(sock, version=version)
        assert http_status(head) == 101, head
        sock.sendall(client_frame(OP_BINARY, b"v" + version.encode()))
        assert read_data(FrameReader(sock), 1 + len(version))[1] == b"v" + version.encode()


@pytest.mark.parametrize("version", ["12", "14", "0", "6", "abc"])
def test_other_versions_get_400_listing_the_supported_ones(bridge: Bridge, version: str) -> None:
    """Any other version → 400 with ``Sec-WebSocket-Version: 13, 8, 7``."""
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        head = upgrade(sock, version=version)
    assert http_status(head) == 400, head
    supported = http_header(head, "Sec-WebSocket-Version")
    assert supported is not None, head
    assert [v.strip() for v in supported.split(",")] == ["13", "8", "7"]


@pytest.mark.parametrize(("request_bytes", "reason"), [
    (upgrade_request(http_version="HTTP/1.0"),
     b"a WebSocket upgrade needs HTTP/1.1 or later, not 'HTTP/1.0'\n"),
    (upgrade_request(host=None), b"a WebSocket upgrade needs a Host header\n"),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
     b"Connection: Upgrade\r\n\r\n",
     b"Hixie-75 WebSocket upgrade needs an Origin header "
     b"(RFC 6455 needs Sec-WebSocket-Key and Sec-WebSocket-Version)\n"),
], ids=["http-1.0", "no-host", "bare-upgrade"])
def test_malformed_upgrades_get_400_with_the_reason(bridge: Bridge, request_bytes: bytes,
                                                    reason: bytes) -> None:
    """HTTP/1.0, a missing Host, or ``Upgrade: websocket`` alone: 400, not a 101."""
    status, head, body = raw_request(bridge.server.port, request_bytes)
    assert status == 400, head
    assert body == reason


HIXIE_75 = (b"GET /demo HTTP/1.1\r\nHost: localhost\r\nUpgrade: WebSocket\r\n"
            b"Connection: Upgrade\r\nOrigin: http://localhost\r\n\r\n")


def test_hixie_handshake_is_accepted_by_default(bridge: Bridge) -> None:
    """Without --no-hixie an old Hixie-75 client is upgraded (101)."""
    with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=TIMEOUT) as sock:
        sock.sendall(HIXIE_75)
        head = read_http_head(sock)
    assert http_status(head) == 101, head


def test_no_hixie_refuses_hixie_but_not_rfc6455(tmp_path: Path) -> None:
    """--no-hixie: the Hixie-75 handshake gets a 4xx, an RFC 6455 client still works."""
    target = RecordingTarget()
    try:
        with websockify(tmp_path, "--no-hixie", "127.0.0.1:0",
                        f"127.0.0.1:{target.port}") as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(HIXIE_75)
                head = read_http_head(sock)
            assert 400 <= http_status(head) < 500, head
            echo_roundtrip(server.port)
    finally:
        target.close()


# ---------------------------------------------------------------------------
# Frames that break the protocol → Close 1002 (or 1007), then TCP close

def long_length_frame(length_field: bytes) -> bytes:
    """A masked binary frame header with a raw 64-bit length field and no payload."""
    return bytes([0x80 | OP_BINARY, 0x80 | 127]) + length_field + b"\x01\x02\x03\x04"


VIOLATIONS: dict[str, bytes] = {
    "unmasked": client_frame(OP_BINARY, b"hello", mask=None),
    "rsv1": client_frame(OP_BINARY, b"hello", rsv=4),
    "rsv2": client_frame(OP_BINARY, b"hello", rsv=2),
    "rsv3": client_frame(OP_BINARY, b"hello", rsv=1),
    "opcode-3": client_frame(0x3, b"hello"),
    "opcode-7": client_frame(0x7, b"hello"),
    "opcode-B": client_frame(0xB, b"hello"),
    "opcode-F": client_frame(0xF, b""),
    "fragmented-ping": client_frame(OP_PING, b"p", fin=False),
    "fragmented-close": client_frame(OP_CLOSE, close_payload(1000), fin=False),
    "ping-126-bytes": client_frame(OP_PING, b"p" * 126),
    "close-126-bytes": client_frame(OP_CLOSE, close_payload(1000, b"r" * 124)),
    "continuation-without-start": client_frame(OP_CONT, b"orphan"),
    "new-message-inside-fragmented-one": (client_frame(OP_BINARY, b"a", fin=False)
                                          + client_frame(OP_BINARY, b"b")),
    "close-with-1-byte-payload": client_frame(OP_CLOSE, b"\x03"),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_protocol_violation_gets_close_1002_then_tcp_close(bridge: Bridge, name: str) -> None:
    """Unmasked, RSV, unknown opcode, fragmented or oversized control, orphan
    continuation …: the server answers Close 1002 and hangs up."""
    sock, _ = bridge.connect()
    with sock:
        sock.sendall(VIOLATIONS[name])
        result = expect_close(sock)
        assert result.code == 1002, f"{name}: close code {result.code} {result.reason!r}"
        assert_tcp_closed(sock)


def test_64_bit_length_with_the_top_bit_set_is_refused(bridge: Bridge) -> None:
    """RFC 6455 5.2: the most significant bit of a 64-bit length must be 0."""
    sock, _ = bridge.connect()
    with sock:
        sock.sendall(long_length_frame(struct.pack("!Q", 1 << 63)))
        result = expect_close(sock)
        assert result.code == 1002, result
        assert_tcp_closed(sock)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_code_gets_1002(bridge: Bridge, code: int) -> None:
    """A Close carrying a code that may not be sent on the wire → Close 1002."""
    sock, _ = bridge.connect()
    with sock:
        send_close(sock, code)
        result = expect_close(sock)
        assert result.code == 1002, f"sent {code}, got {result.code}"
        assert_tcp_closed(sock)


def test_invalid_utf8_close_reason_is_refused(bridge: Bridge) -> None:
    """A Close reason that is not UTF-8 → Close 1007 (RFC 6455 7.4.1: invalid UTF-8
    in a message), then TCP close."""
    sock, _ = bridge.connect()
    with sock:
        send_close(sock, 1000, b"\xff\xfe bad")
        result = expect_close(sock)
        assert result.code == 1007, result
        assert_tcp_closed(sock)


@pytest.mark.parametrize("payload", [b"!!!!", b"a===", "é".encode(), b"\xc3\x28"])
def test_base64_mode_rejects_bad_base64_or_utf8_with_1007(fresh_bridge: Bridge,
                                                         payload: bytes) -> None:
    """In base64 mode a text message that is not valid base64 (or not even
    UTF-8) → Close 1007 and TCP close; nothing of it reaches the target."""
    sock, index = fresh_bridge.connect(protocols="base64")
    with sock:
        sock.sendall(client_frame(OP_TEXT, payload))
        result = expect_close(sock)
        assert result.code == 1007, f"{payload!r}: got {result.code}"
        assert_tcp_closed(sock)
    peer = fresh_bridge.target.peer(index)
    assert peer.eof.wait(TIMEOUT)
    assert peer.received() == b""


def test_binary_mode_text_message_with_invalid_utf8_gets_1007(bridge: Bridge) -> None:
    """RFC 6455 8.1: a text message that is not UTF-8 fails the connection with 1007,
    even in binary mode."""
    sock, _ = bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_TEXT, b"ok \xff\xfe"))
        result = expect_close(sock)
        assert result.code == 1007, result
        assert_tcp_closed(sock)


def test_binary_mode_utf8_character_split_across_fragments_is_relayed(fresh_bridge: Bridge) -> None:
    """A valid text message whose 2-byte character is cut between two fragments is
    valid UTF-8 as a whole and reaches the target as its bytes."""
    text = "é".encode()
    sock, index = fresh_bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_TEXT, b"caf" + text[:1], fin=False)
                     + client_frame(OP_CONT, text[1:]))
        assert read_data(FrameReader(sock), 5)[1] == b"caf" + text
    assert fresh_bridge.target.peer(index).received() == b"caf" + text


def test_base64_message_split_inside_a_quartet_is_decoded_whole(fresh_bridge: Bridge) -> None:
    """Fragmentation is transparent: "aGV" + "sbG8=" is one base64 message, "hello"."""
    sock, index = fresh_bridge.connect(protocols="base64")
    with sock:
        sock.sendall(client_frame(OP_TEXT, b"aGV", fin=False) + client_frame(OP_CONT, b"sbG8="))
        _, text = read_data(FrameReader(sock), 8)
        assert base64.b64decode(text) == b"hello"
    assert fresh_bridge.target.peer(index).received() == b"hello"


def test_bytes_of_frames_before_a_bad_frame_reach_the_target(fresh_bridge: Bridge) -> None:
    """Good frames sent in the same write as a bad one are still delivered."""
    sock, index = fresh_bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_BINARY, b"first ") + client_frame(OP_BINARY, b"second")
                     + client_frame(OP_BINARY, b"bad", rsv=4))
        result = expect_close(sock)
        assert result.code == 1002
        assert_tcp_closed(sock)
    peer = fresh_bridge.target.peer(index)
    assert peer.eof.wait(TIMEOUT), "target connection not closed after the violation"
    assert peer.received() == b"first second"


# ---------------------------------------------------------------------------
# Control frames and fragmentation

@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
def test_ping_is_answered_with_a_pong_of_the_same_payload(bridge: Bridge, payload: bytes) -> None:
    """A ping (0 to 125 bytes) gets a pong carrying exactly its payload."""
    sock, _ = bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_PING, payload))
        opcode, fin, answer = FrameReader(sock).read_frame()
        assert (opcode, fin, answer) == (OP_PONG, True, payload)


def test_ping_inside_a_fragmented_message(fresh_bridge: Bridge) -> None:
    """A ping between fragments is answered and the message is still relayed whole."""
    sock, index = fresh_bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_BINARY, b"ab", fin=False) + client_frame(OP_PING, b"mid")
                     + client_frame(OP_CONT, b"cd", fin=False) + client_frame(OP_CONT, b"ef"))
        reader = FrameReader(sock)
        pongs: list[bytes] = []
        data = bytearray()
        while len(data) < 6 or not pongs:
            opcode, _, payload = reader.read_frame()
            if opcode == OP_PONG:
                pongs.append(payload)
            else:
                data += payload
        assert pongs == [b"mid"]
        assert bytes(data) == b"abcdef"
    assert fresh_bridge.target.peer(index).received().startswith(b"abcdef")


def test_unsolicited_pong_is_ignored(fresh_bridge: Bridge) -> None:
    """A pong nobody asked for neither closes the connection nor reaches the target."""
    sock, index = fresh_bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_PONG, b"unsolicited") + client_frame(OP_BINARY, b"after"))
        assert read_data(FrameReader(sock), 5)[1] == b"after"
    assert fresh_bridge.target.peer(index).received() == b"after"


def test_frames_dribbled_one_byte_per_write_are_reassembled(bridge: Bridge) -> None:
    """A frame arriving one byte per TCP segment (16-bit length form) is relayed."""
    payload = bytes(range(256)) * 2
    sock, _ = bridge.connect()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in client_frame(OP_BINARY, payload):
            sock.sendall(bytes([byte]))
        assert read_data(FrameReader(sock), len(payload))[1] == payload


def test_frames_sent_in_the_same_write_as_the_handshake_are_relayed(fresh_bridge: Bridge) -> None:
    """A client that pipelines its first frames behind the upgrade request (one
    write, one frame cut in half) loses nothing: every byte reaches the target."""
    index = len(fresh_bridge.target.peers)
    request = upgrade_request()
    second = client_frame(OP_BINARY, b"-second-" * 100)
    with socket.create_connection(("127.0.0.1", fresh_bridge.server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request + client_frame(OP_BINARY, b"first") + second[:300])
        head = read_http_head(sock)
        assert http_status(head) == 101, head
        sock.sendall(second[300:])
        _, data = read_data(FrameReader(sock), 5 + 800)
        assert data == b"first" + b"-second-" * 100
    assert fresh_bridge.target.peer(index).received().startswith(b"first-second-")


# ---------------------------------------------------------------------------
# Closing

def test_client_close_is_answered_and_the_target_sees_eof(fresh_bridge: Bridge) -> None:
    """Client Close 1000 → the server answers Close, closes TCP, and the target
    connection gets EOF."""
    sock, index = fresh_bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_BINARY, b"data"))
        peer = fresh_bridge.target.peer(index)
        send_close(sock, 1000, b"bye")
        result = expect_close(sock)
        assert result.code in (1000, None), result
        assert_tcp_closed(sock)
    assert peer.eof.wait(TIMEOUT), "target never saw EOF after the client's Close"
    assert peer.received() == b"data"


@pytest.mark.parametrize("code", [1001, 1003, 1011, 3000, 4999])
def test_valid_close_codes_get_a_normal_answer(bridge: Bridge, code: int) -> None:
    """A legal close code is answered with a Close that is not a protocol error."""
    sock, _ = bridge.connect()
    with sock:
        send_close(sock, code)
        result = expect_close(sock)
        assert result.code in (code, 1000, None), f"sent {code}, got {result.code}"
        assert_tcp_closed(sock)


def test_empty_close_is_answered(bridge: Bridge) -> None:
    """A Close without a status code is legal and answered."""
    sock, _ = bridge.connect()
    with sock:
        sock.sendall(client_frame(OP_CLOSE, b""))
        result = expect_close(sock)
        assert result.code in (1000, None), result
        assert_tcp_closed(sock)


def test_target_eof_sends_close_1000_after_the_data(tmp_path: Path) -> None:
    """When the target hangs up, the client gets its last bytes then Close 1000."""
    target = RecordingTarget(greeting=b"goodbye", close_after_greeting=True)
    try:
        with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{target.port}") as server, \
                socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            assert http_status(upgrade(sock)) == 101
            result = expect_close(sock)
            assert result.data == b"goodbye"
            assert result.code == 1000, result
            send_close(sock)
            assert_tcp_closed(sock)
    finally:
        target.close()


def test_unreachable_target_gets_close_1011_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """With nothing listening at the target, the client is upgraded (101) and then
    closed with 1011 and a reason; later clients are served the same way."""
    with refusing_port() as port, \
            websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{port}") as server:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                head = upgrade(sock)
                assert http_status(head) == 101, head
                result = expect_close(sock)
                assert result.code == 1011, result
                assert result.reason.strip(), "1011 without a reason"
                result.reason.decode("utf-8")
                assert_tcp_closed(sock)
        assert server.proc.poll() is None


def test_server_keeps_serving_after_many_violations(bridge: Bridge) -> None:
    """After every refusal above (this test runs last in the module) the same
    server process still bridges."""
    assert bridge.server.proc.poll() is None
    echo_roundtrip(bridge.server.port)
    assert "Traceback" not in bridge.server.log(), "a client's error crashed a handler"
