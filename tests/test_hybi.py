"""HybiCodec byte for byte: RFC 6455 section 5.7 both ways, every violation, every split.

Client frames are built by ``tests.support.client_frame``, which masks on its own,
so the parser is checked against the RFC rather than against itself.
"""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Sequence

import pytest

from tests.support import client_frame
from websockify.protocol.codec import Close, Data, Event, Ping, Pong, Violation
from websockify.protocol.hybi import JOIN_THRESHOLD, HybiCodec

MASK = bytes.fromhex("37fa213d")
LIMIT = 1 << 20

#: What a relay sees, made comparable: adjacent Data merged into one bytes object.
Output = list[tuple[str, object]]


def normalize(events: list[Event]) -> Output:
    out: Output = []
    for event in events:
        if isinstance(event, Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + bytes(event.payload))  # type: ignore[operator]
            else:
                out.append(("data", bytes(event.payload)))
        else:
            out.append(("event", event))
    return [item for item in out if item != ("data", b"")]


def run(
    stream: bytes, cuts: Sequence[int] = (), subprotocol: str | None = "binary", limit: int = LIMIT
) -> tuple[Output, int | None]:
    """Feed ``stream`` cut at ``cuts``; returns the output and the close code of a failure."""
    codec = HybiCodec(subprotocol, limit)
    events: list[Event] = []
    start = 0
    for stop in [*sorted(cuts), len(stream)]:
        events += codec.receive(stream[start:stop])
        if events and isinstance(events[-1], Violation):
            return normalize(events[:-1]), events[-1].close_code
        start = stop
    return normalize(events), None


def receive(codec: HybiCodec, data: bytes) -> Output:
    return normalize(codec.receive(data))


def data(payload: bytes) -> Output:
    return [("data", payload)]


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    return client_frame(opcode, payload, fin=fin, mask=MASK, rsv=rsv)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# -- RFC 6455 section 5.7, client to server ------------------------------------------


def test_rfc_masked_hello() -> None:
    wire = bytes.fromhex("818537fa213d7f9f4d5158")
    assert frame(1, b"Hello") == wire
    assert receive(HybiCodec("binary", LIMIT), wire) == data(b"Hello")


def test_rfc_fragmented_hello() -> None:
    codec = HybiCodec("binary", LIMIT)
    assert codec.receive(frame(1, b"Hel", fin=False)) == [Data(b"Hel")]
    assert codec.receive(frame(0, b"lo")) == [Data(b"lo")]


def test_rfc_masked_pong() -> None:
    wire = bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert HybiCodec("binary", LIMIT).receive(wire) == [Pong(b"Hello")]


def test_ping() -> None:
    assert HybiCodec(None, LIMIT).receive(frame(9, b"Hello")) == [Ping(b"Hello")]


@pytest.mark.parametrize(("size", "header"), [(256, "82fe0100"), (65536, "82ff0000000000010000")])
def test_rfc_long_binary_frames(size: int, header: str) -> None:
    payload = random.Random(size).randbytes(size)
    wire = client_frame(2, payload, mask=MASK)
    assert wire.startswith(bytes.fromhex(header) + MASK)
    assert receive(HybiCodec("binary", LIMIT), wire) == data(payload)


# -- RFC 6455 section 5.7, server to client --------------------------------------------


def encoded(pieces: list) -> bytes:
    return b"".join(bytes(piece) for piece in pieces)


def test_rfc_unmasked_ping_and_pong() -> None:
    codec = HybiCodec("binary", LIMIT)
    assert codec.encode_ping(b"Hello") == bytes.fromhex("890548656c6c6f")
    assert codec.encode_pong(b"Hello") == bytes.fromhex("8a0548656c6c6f")
    assert codec.encode_ping() == b"\x89\x00"


def test_binary_frames_of_every_length_encoding() -> None:
    codec = HybiCodec("binary", LIMIT)
    assert encoded(codec.encode_data(b"Hello")) == b"\x82\x05Hello"
    assert encoded(codec.encode_data(b"")) == b"\x82\x00"
    for size, header in [
        (125, "827d"),
        (126, "827e007e"),
        (256, "827e0100"),
        (65535, "827effff"),
        (65536, "827f0000000000010000"),
    ]:
        payload = random.Random(size).randbytes(size)
        assert encoded(codec.encode_data(payload)) == bytes.fromhex(header) + payload


def test_small_payloads_are_joined_large_ones_are_not_copied() -> None:
    codec = HybiCodec(None, LIMIT)
    assert len(codec.encode_data(bytes(JOIN_THRESHOLD - 1))) == 1
    large = memoryview(bytes(JOIN_THRESHOLD))
    pieces = codec.encode_data(large)
    assert len(pieces) == 2
    assert pieces[1] is large


def test_base64_mode_sends_text_frames() -> None:
    codec = HybiCodec("base64", LIMIT)
    assert encoded(codec.encode_data(b"Hello")) == b"\x81\x08SGVsbG8="
    payload = bytes(range(256)) * 100
    text = encoded(codec.encode_data(payload))
    assert text[:4] == b"\x81\x7e\x85\x58"
    assert text[4:] == base64.b64encode(payload)


def test_close_frames() -> None:
    codec = HybiCodec("binary", LIMIT)
    assert codec.encode_close() == b"\x88\x02\x03\xe8"
    assert codec.encode_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert codec.encode_close(1002, "") == b"\x88\x02\x03\xea"


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_close_reason_is_cut_between_characters(char: str) -> None:
    frame_bytes = HybiCodec("binary", LIMIT).encode_close(1001, char * 200)
    length = frame_bytes[1]
    assert length <= 125
    assert len(frame_bytes) == 2 + length
    reason = frame_bytes[4:].decode("utf-8")  # must not raise
    assert reason == char * len(reason)
    assert 125 - length < len(char.encode())  # nothing cut that would have fit


def test_oversized_control_payload_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        HybiCodec("binary", LIMIT).encode_ping(bytes(126))


def test_codec_attributes() -> None:
    codec = HybiCodec("base64", LIMIT)
    assert codec.supports_ping is True
    assert codec.subprotocol == "base64"


# -- receiving ----------------------------------------------------------------------


def test_close_codes_and_reasons() -> None:
    assert HybiCodec("binary", LIMIT).receive(frame(8)) == [Close(None, "")]
    wire = frame(8, close_payload(1001, "au revoir €".encode()))
    assert HybiCodec("binary", LIMIT).receive(wire) == [Close(1001, "au revoir €")]
    for code in (1000, 1003, 1007, 1014, 3000, 4999):
        assert HybiCodec("binary", LIMIT).receive(frame(8, close_payload(code))) == [Close(code)]


def test_input_after_close_is_ignored() -> None:
    codec = HybiCodec("binary", LIMIT)
    garbage = b"\x00\xff\x13 not a frame"
    events = codec.receive(frame(2, b"last") + frame(8, close_payload(1000)) + garbage)
    assert normalize(events) == [*data(b"last"), ("event", Close(1000))]
    assert codec.receive(garbage) == []
    assert codec.receive(frame(2, b"more")) == []


def test_control_frames_inside_a_fragmented_message() -> None:
    stream = (
        frame(2, b"ab", fin=False)
        + frame(9, b"p")
        + frame(0, b"cd", fin=False)
        + frame(10)
        + frame(0, b"ef")
    )
    assert run(stream) == (
        [*data(b"ab"), ("event", Ping(b"p")), *data(b"cd"), ("event", Pong(b"")), *data(b"ef")],
        None,
    )


def test_empty_frames_and_messages() -> None:
    stream = frame(2) + frame(1) + frame(2, b"", fin=False) + frame(0, b"x") + frame(9)
    assert run(stream) == ([*data(b"x"), ("event", Ping(b""))], None)


def test_payload_is_streamed_before_the_frame_is_complete() -> None:
    codec = HybiCodec("binary", LIMIT)
    payload = random.Random(5).randbytes(70_000)
    wire = client_frame(2, payload, mask=MASK)
    got = b""
    for start in range(0, len(wire), 1000):
        events = codec.receive(wire[start : start + 1000])
        got += b"".join(bytes(event.payload) for event in events)  # type: ignore[union-attr]
        assert got == payload[: max(0, start + 1000 - 14)]
    assert got == payload


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_any_bytes_like_input_and_no_aliasing(kind: type) -> None:
    """Payloads are copies, so a caller may reuse its receive buffer."""
    codec = HybiCodec("binary", LIMIT)
    small = frame(2, b"small")
    large_payload = random.Random(6).randbytes(5000)
    buffer = bytearray(small + client_frame(2, large_payload, mask=MASK) + frame(9, b"pi")[:3])
    events = codec.receive(kind(buffer))
    buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
    assert normalize(events) == data(b"small" + large_payload)
    rest = frame(9, b"pi")[3:]
    assert codec.receive(kind(bytearray(rest))) == [Ping(b"pi")]


def test_text_in_binary_mode_is_relayed_as_utf8_bytes() -> None:
    text = "héllo wörld €😀".encode()
    # The message is split inside multi-byte characters, across fragments.
    stream = frame(1, text[:2], fin=False) + frame(0, text[2:13], fin=False) + frame(0, text[13:])
    for subprotocol in ("binary", None):
        assert run(stream, subprotocol=subprotocol) == (data(text), None)


def test_utf8_state_does_not_leak_between_messages() -> None:
    stream = frame(2, b"\xe2") + frame(1, b"ok")
    assert run(stream) == (data(b"\xe2ok"), None)


def test_base64_mode() -> None:
    stream = (
        frame(1, b"SGVs", fin=False)
        + frame(9)
        + frame(0, b"bG8=")
        + frame(2, b"raw \xff")
        + frame(1, b"IQ==")
    )
    for cuts in ([], [3], [10], [7, 21]):
        assert run(stream, cuts, "base64") == (
            [*data(b"Hel"), ("event", Ping(b"")), *data(b"lo" + b"raw \xff" + b"!")],
            None,
        )


# -- violations: each gets exactly one close code ------------------------------------

LONG_CLOSE = frame(8, close_payload(1000, b"x" * 200))

VIOLATIONS = [
    ("unmasked", client_frame(2, b"abc", mask=None), 1002),
    ("unmasked empty", b"\x82\x00", 1002),
    ("rsv1", frame(2, b"abc", rsv=4), 1002),
    ("rsv2", frame(2, b"abc", rsv=2), 1002),
    ("rsv3", frame(2, b"abc", rsv=1), 1002),
    ("rsv on control", frame(9, b"", rsv=4), 1002),
    *[(f"opcode {op:#x}", frame(op, b"abc"), 1002) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    ("fragmented ping", frame(9, b"", fin=False), 1002),
    ("fragmented close", frame(8, b"", fin=False), 1002),
    ("ping of 126", frame(9, bytes(126)), 1002),
    ("pong of 200", frame(10, bytes(200)), 1002),
    ("close of 126", frame(8, close_payload(1000, bytes(124))), 1002),
    ("lone continuation", frame(0, b"abc"), 1002),
    ("continuation after a final frame", (frame(2, b"a"), frame(0, b"b")), 1002),
    ("new binary inside a message", (frame(2, b"a", fin=False), frame(2, b"b")), 1002),
    ("new text inside a message", (frame(1, b"a", fin=False), frame(1, b"b")), 1002),
    ("64-bit length top bit", b"\x82\xff\x80" + bytes(7) + MASK, 1002),
    ("close of 1 byte", frame(8, b"\x03"), 1002),
    *[
        (f"close code {code}", frame(8, close_payload(code)), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    ],
    ("close reason not utf-8", frame(8, close_payload(1000, b"\xff")), 1007),
    ("close reason cut utf-8", frame(8, close_payload(1000, "€".encode()[:2])), 1007),
    ("text not utf-8", frame(1, b"ab\xffcd"), 1007),
    ("text overlong", frame(1, b"\xc0\xaf"), 1007),
    ("text surrogate", frame(1, b"\xed\xa0\x80"), 1007),
    ("text ends inside a character", frame(1, "€".encode()[:2]), 1007),
    (
        "fragmented text ends inside a character",
        (frame(1, b"a", fin=False), frame(0, "€".encode()[:1])),
        1007,
    ),
    ("message over the limit", frame(2, bytes(1001)), 1009),
    ("fragments over the limit", (frame(2, bytes(600), fin=False), frame(0, bytes(401))), 1009),
]


@pytest.mark.parametrize(
    ("good", "bad", "code"),
    [
        pytest.param(*(stream if isinstance(stream, tuple) else (b"", stream)), code, id=name)
        for name, stream, code in VIOLATIONS
    ],
)
def test_violation_close_code_and_preceding_events(good: bytes, bad: bytes, code: int) -> None:
    """The error carries everything that came before the bad frame, and nothing after."""
    before = frame(2, b"before") + frame(9, b"p") + good
    expected, no_error = run(before, limit=1000)
    assert no_error is None
    output, close_code = run(before + bad + frame(2, b"after"), limit=1000)
    assert close_code == code
    if code == 1007:
        # Streaming: pieces of the bad message that came before its bad bytes were relayed.
        assert output[:2] == expected[:2]
        assert [kind for kind, _ in output[2:]] in ([], ["data"])
    else:
        assert output == expected


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (frame(1, b"not*base64"), 1007),
        (frame(1, b"SGVsbG8"), 1007),  # unfinished group at the message end
        (frame(1, b"SA==", fin=False) + frame(0, b"SA=="), 1007),  # padding inside a message
        (frame(1, b"SGVs bG8="), 1007),
    ],
)
def test_base64_violations(stream: bytes, code: int) -> None:
    assert run(stream, subprotocol="base64")[1] == code


def test_oversized_message_fails_on_its_header_alone() -> None:
    codec = HybiCodec("binary", 1000)
    events = codec.receive(b"\x82\xff" + struct.pack("!Q", 1 << 40) + MASK)
    assert events == [Violation("message over the limit of 1000 bytes", 1009)]


def test_message_at_the_limit_passes() -> None:
    stream = frame(2, bytes(600), fin=False) + frame(0, bytes(400)) + frame(2, bytes(1000))
    assert run(stream, limit=1000) == (data(bytes(2000)), None)


def test_input_after_an_error_is_ignored() -> None:
    codec = HybiCodec("binary", LIMIT)
    assert codec.receive(b"\x82\x00") == [Violation("client frames must be masked", 1002)]
    assert codec.receive(frame(2, b"x")) == []


# -- every split gives the same output ----------------------------------------------

SPLIT_STREAMS = {
    "rfc": bytes.fromhex("818537fa213d7f9f4d5158")
    + frame(1, b"Hel", fin=False)
    + frame(0, b"lo")
    + bytes.fromhex("8a8537fa213d7f9f4d5158"),
    "lengths": b"".join(frame(2, random.Random(n).randbytes(n)) for n in (0, 1, 125, 126, 127, 300))
    + frame(9, b"ping")
    + frame(8, close_payload(1000, b"bye"))
    + b"trailing garbage",
    "text": frame(1, "aé€😀".encode()[:4], fin=False) + frame(0, "aé€😀".encode()[4:]),
    "violation": frame(2, b"ok") + frame(10, b"x") + frame(2, b"bad", rsv=1) + frame(2, b"never"),
    "bad close": frame(2, b"ok") + frame(8, close_payload(1005)),
    "too big": frame(2, b"ok", fin=False) + frame(0, bytes(2000)),
}


@pytest.mark.parametrize("name", SPLIT_STREAMS)
def test_every_split_gives_the_same_output(name: str) -> None:
    stream = SPLIT_STREAMS[name]
    whole = run(stream, limit=1000)
    for i in range(len(stream) + 1):
        assert run(stream, [i], limit=1000) == whole, i
    assert run(stream, list(range(len(stream))), limit=1000) == whole


def test_every_split_of_a_large_frame() -> None:
    payload = random.Random(7).randbytes(65536)
    stream = client_frame(2, payload, mask=MASK) + frame(2, b"tail")
    expected = (data(payload + b"tail"), None)
    for i in [*range(0, 40), *range(65530, len(stream) + 1)]:
        assert run(stream, [i]) == expected, i
    for step in (1000, 4096, 65535):
        assert run(stream, list(range(step, len(stream), step))) == expected
