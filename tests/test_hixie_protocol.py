"""Hixie-76/75 handshake and codec, byte for byte and fuzzed; no sockets."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from websockify.errors import HandshakeError
from websockify.protocol import handshake, hixie
from websockify.protocol.codec import Close, Data, Event, Violation
from websockify.protocol.handshake import HandshakeOptions, UpgradeRequest

# The worked example of the server handshake in draft-hixie-thewebsocketprotocol-76: these
# keys are 155712099 and 173347027 over their spaces, and this is their answer.
SPEC_KEY1 = "18x 6]8vM;54 *(5:  {   U1]8  z [  8"
SPEC_KEY2 = "1_ tx7X d  <  nw  334J702) 7]o}` 0"
SPEC_BODY = b"Tm[K T2u"
SPEC_ANSWER = b"fQJ,fN/4F4!~K~MH"

OPTIONS = HandshakeOptions(max_message_size=1 << 20)


def request76(
    key1: str = SPEC_KEY1, key2: str = SPEC_KEY2, extra: dict[str, str] | None = None
) -> UpgradeRequest:
    headers = {
        "host": "example.com",
        "upgrade": "WebSocket",
        "connection": "Upgrade",
        "origin": "http://example.com",
        "sec-websocket-key1": key1,
        "sec-websocket-key2": key2,
        **(extra or {}),
    }
    return UpgradeRequest("GET", "/demo", headers)


def request75(secure: bool = False, extra: dict[str, str] | None = None) -> UpgradeRequest:
    headers = {
        "host": "example.com:8080",
        "upgrade": "WebSocket",
        "connection": "Upgrade",
        "origin": "http://example.com",
        **(extra or {}),
    }
    return UpgradeRequest("GET", "/demo?token=a", headers, secure=secure)


# ---------------------------------------------------------------- handshake


def test_spec_challenge_vector() -> None:
    assert hixie.challenge_response(SPEC_KEY1, SPEC_KEY2, SPEC_BODY) == SPEC_ANSWER


def test_hixie76_response_is_byte_exact() -> None:
    upgrade = hixie.accept(
        request76(extra={"sec-websocket-protocol": "sample"}), SPEC_BODY, OPTIONS
    )
    assert upgrade.version == "hixie-76"
    assert upgrade.response == (
        b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Origin: http://example.com\r\n"
        b"Sec-WebSocket-Location: ws://example.com/demo\r\n"
        b"Sec-WebSocket-Protocol: sample\r\n"
        b"\r\n" + SPEC_ANSWER
    )


def test_hixie76_second_spec_example() -> None:
    # The example in the introduction of draft-76: another pair of keys, body and answer.
    answer = hixie.challenge_response("4 @1  46546xW%0l 1 5", "12998 5 Y3 1  .P00", b"^n:ds[4U")
    assert answer == b"8jKS'y:G*Co,Wxa-"


def test_hixie76_over_tls_says_wss_and_omits_what_was_not_offered() -> None:
    headers = dict(request76().headers)
    del headers["origin"]
    request = UpgradeRequest("GET", "/demo", headers, secure=True)
    assert hixie.accept(request, SPEC_BODY, OPTIONS).response == (
        b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Location: wss://example.com/demo\r\n"
        b"\r\n" + SPEC_ANSWER
    )


@pytest.mark.parametrize("offer", ["binary", "base64", "binary, base64", "chat"])
def test_offered_protocol_is_echoed_verbatim_and_payloads_stay_base64(offer: str) -> None:
    upgrade = hixie.accept(request76(extra={"sec-websocket-protocol": offer}), SPEC_BODY, OPTIONS)
    assert f"\r\nSec-WebSocket-Protocol: {offer}\r\n".encode() in upgrade.response
    assert upgrade.codec.subprotocol == "base64"
    assert upgrade.codec.encode_data(b"\x00\xff") == [b"\x00AP8=\xff"]


def test_hixie75_response_is_byte_exact() -> None:
    upgrade = hixie.accept(request75(), b"", OPTIONS)
    assert upgrade.version == "hixie-75"
    assert upgrade.response == (
        b"HTTP/1.1 101 Web Socket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"WebSocket-Origin: http://example.com\r\n"
        b"WebSocket-Location: ws://example.com:8080/demo?token=a\r\n"
        b"\r\n"
    )


def test_hixie75_over_tls_with_protocol() -> None:
    upgrade = hixie.accept(request75(secure=True, extra={"websocket-protocol": "binary"}), b"",
                           OPTIONS)
    assert upgrade.response == (
        b"HTTP/1.1 101 Web Socket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"WebSocket-Origin: http://example.com\r\n"
        b"WebSocket-Location: wss://example.com:8080/demo?token=a\r\n"
        b"WebSocket-Protocol: binary\r\n"
        b"\r\n"
    )


def test_codec_gets_the_message_size_limit() -> None:
    options = HandshakeOptions(max_message_size=1234)
    for upgrade in (hixie.accept(request76(), SPEC_BODY, options),
                    hixie.accept(request75(), b"", options)):
        assert isinstance(upgrade.codec, hixie.HixieCodec)
        assert upgrade.codec.max_message_size == 1234


def test_handshake_dispatches_hixie_requests_here() -> None:
    assert handshake.body_length(request76()) == 8
    assert handshake.body_length(request75()) == 0
    assert handshake.accept(request76(), SPEC_BODY, OPTIONS).version == "hixie-76"
    assert handshake.accept(request75(), b"", OPTIONS).version == "hixie-75"
    with pytest.raises(HandshakeError) as refused:
        handshake.accept(request76(), SPEC_BODY, HandshakeOptions(allow_hixie=False))
    assert refused.value.status == 426


@pytest.mark.parametrize(
    ("key1", "reason"),
    [
        ("12345", "Sec-WebSocket-Key1 has no spaces"),
        ("1  3", "not a multiple of its 2 spaces"),
        ("4294967296 ", "over 32 bits"),
        ("1 2 3 4 5 6 7 8 9 0 1 2", "over 32 bits"),
        ("9" * 5000 + " ", "over 32 bits"),
        ("  x ", "Sec-WebSocket-Key1 has no digits"),
    ],
)
def test_malformed_key_is_refused_with_400(key1: str, reason: str) -> None:
    with pytest.raises(HandshakeError) as refused:
        hixie.accept(request76(key1=key1), SPEC_BODY, OPTIONS)
    assert refused.value.status == 400
    assert reason in refused.value.reason


@pytest.mark.parametrize("key", ["4294967295 ", "000000000000004294967295 ", "0 "])
def test_key_numbers_up_to_32_bits_are_accepted(key: str) -> None:
    assert len(hixie.challenge_response(key, SPEC_KEY2, SPEC_BODY)) == 16


@pytest.mark.parametrize(
    ("change", "body", "reason"),
    [
        ({"sec-websocket-key2": None}, SPEC_BODY, "needs both Sec-WebSocket-Key1 and"),
        ({}, SPEC_BODY[:7], "needs 8 bytes after the headers, got 7"),
        ({}, b"", "needs 8 bytes after the headers, got 0"),
        ({"host": None}, SPEC_BODY, "needs a Host header"),
        ({"origin": "http://ex\x01ample.com"}, SPEC_BODY, "origin is not printable ASCII"),
        ({"sec-websocket-protocol": "caf\xe9"}, SPEC_BODY, "not printable ASCII"),
    ],
)
def test_malformed_request_is_refused_with_400(
    change: dict[str, str | None], body: bytes, reason: str
) -> None:
    headers = dict(request76().headers)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(HandshakeError) as refused:
        hixie.accept(UpgradeRequest("GET", "/demo", headers), body, OPTIONS)
    assert refused.value.status == 400
    assert reason in refused.value.reason


# ---------------------------------------------------------------- codec


def codec(max_message_size: int = 1 << 20) -> hixie.HixieCodec:
    return hixie.HixieCodec(max_message_size)


def frame(payload: bytes) -> bytes:
    """A client frame, built independently of the codec."""
    return b"\x00" + base64.b64encode(payload) + b"\xff"


def payload_of(events: list[Event]) -> bytes:
    return b"".join(bytes(event.payload) for event in events if isinstance(event, Data))


def violation_of(events: list[Event]) -> Violation:
    """The final Violation of ``events`` (the test fails if there is none)."""
    assert events and isinstance(events[-1], Violation), events
    return events[-1]


def run(stream: bytes, cuts: list[int], limit: int = 64) -> tuple[bytes, object]:
    """Feed ``stream`` cut at ``cuts``: the relayed bytes and how it ended.

    The ending is a Close, a Violation's close code, or None (still open).
    """
    hixie_codec = codec(limit)
    events: list[Event] = []
    for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)], strict=True):
        events += hixie_codec.receive(stream[start:end])
    ending: object = None
    if events and isinstance(events[-1], Violation):
        ending = events[-1].close_code
    elif events and isinstance(events[-1], Close):
        ending = events[-1]
    return payload_of(events), ending


@pytest.mark.parametrize(
    ("payload", "wire"),
    [(b"", b"\x00\xff"), (b"\x00\x01\x02", b"\x00AAEC\xff"), (b"\xff", b"\x00/w==\xff"),
     (b"ab", b"\x00YWI=\xff")],
)
def test_encode_data_is_byte_exact(payload: bytes, wire: bytes) -> None:
    assert b"".join(bytes(piece) for piece in codec().encode_data(payload)) == wire
    assert b"".join(bytes(p) for p in codec().encode_data(memoryview(bytearray(payload)))) == wire


def test_close_has_no_code_and_ping_does_not_exist() -> None:
    hixie_codec = codec()
    assert hixie_codec.encode_close() == b"\xff\x00"
    assert hixie_codec.encode_close(1009, "message too big") == b"\xff\x00"
    assert hixie_codec.supports_ping is False
    with pytest.raises(RuntimeError, match="no ping"):
        hixie_codec.encode_ping()
    with pytest.raises(RuntimeError, match="no pong"):
        hixie_codec.encode_pong(b"")


@pytest.mark.parametrize(
    ("wire", "events"),
    [
        (b"\x00AAEC\xff", [Data(b"\x00\x01\x02")]),
        (b"\x00\xff", []),
        (b"\x00QQ==\xff\x00\xff\x00Qg==\xff", [Data(b"AB")]),  # one read, one Data
        (b"\xff\x00", [Close(code=None)]),
        (b"\x00QQ==\xff\xff\x00\x00Qg==\xff", [Data(b"A"), Close(code=None)]),
    ],
)
def test_receive_is_byte_exact(wire: bytes, events: list[Event]) -> None:
    assert codec().receive(wire) == events


def test_input_after_close_is_ignored() -> None:
    hixie_codec = codec()
    assert hixie_codec.receive(b"\xff") == []
    assert hixie_codec.receive(b"\x00\x00QQ==\xff") == [Close(code=None)]
    assert hixie_codec.receive(b"\x80garbage") == []


def test_bytearray_and_memoryview_input() -> None:
    assert codec().receive(bytearray(b"\x00QUI=\xff")) == [Data(b"AB")]
    assert codec().receive(memoryview(b"xx\x00QUI=\xffyy")[2:-2]) == [Data(b"AB")]


SPLIT_PAYLOADS = [b"", b"a", b"abc", b"abcd", os.urandom(300)]
SPLIT_STREAM = b"".join(frame(p) for p in SPLIT_PAYLOADS) + b"\xff\x00"


@pytest.mark.parametrize("cut", range(len(SPLIT_STREAM) + 1))
def test_stream_split_at_every_byte_boundary(cut: int) -> None:
    hixie_codec = codec()
    events = hixie_codec.receive(SPLIT_STREAM[:cut]) + hixie_codec.receive(SPLIT_STREAM[cut:])
    assert payload_of(events) == b"".join(SPLIT_PAYLOADS)
    assert events[-1] == Close(code=None)


def test_stream_fed_one_byte_at_a_time() -> None:
    hixie_codec = codec()
    events: list[Event] = []
    for i in range(len(SPLIT_STREAM)):
        events += hixie_codec.receive(SPLIT_STREAM[i:i + 1])
    assert payload_of(events) == b"".join(SPLIT_PAYLOADS)
    assert events[-1] == Close(code=None)


@pytest.mark.parametrize("kind", [0x01, 0x7F, 0x80, 0xFE])
def test_unknown_frame_type_is_1002_after_what_preceded_it(kind: int) -> None:
    events = codec().receive(b"\x00QQ==\xff" + bytes([kind]) + b"\x00QQ==\xff")
    assert events[:-1] == [Data(b"A")]
    assert violation_of(events).close_code == 1002
    assert f"0x{kind:02x}" in violation_of(events).reason


def test_ff_with_a_length_is_not_a_close() -> None:
    hixie_codec = codec()
    assert hixie_codec.receive(b"\xff") == []
    assert violation_of(hixie_codec.receive(b"\x05")).close_code == 1002
    assert hixie_codec.receive(b"\x00QQ==\xff") == [], "input after a violation is ignored"


@pytest.mark.parametrize(
    "text", [b"QQ=", b"Q", b"Q!==", b"QQ==QQ==", b"QQ ==", b"QQ==\n", b"\xc3\xa9AAA"]
)
def test_invalid_base64_is_1007(text: bytes) -> None:
    events = codec().receive(b"\x00QUJD\xff\x00" + text + b"\xff")
    assert violation_of(events).close_code == 1007
    assert "base64" in violation_of(events).reason
    assert events[:-1] == [Data(b"ABC")]


@pytest.mark.parametrize("text", [b"\xc3\x28AAAA", b"AAAA\xfe", b"\x80"])
def test_invalid_utf8_is_1007(text: bytes) -> None:
    events = codec().receive(b"\x00" + text + b"\xff")
    assert violation_of(events).close_code == 1007
    assert "UTF-8" in violation_of(events).reason


def test_frame_at_the_size_limit_passes_and_one_byte_more_is_1009() -> None:
    assert codec(8).receive(b"\x00QUJDREVG\xff") == [Data(b"ABCDEF")]
    assert violation_of(codec(8).receive(b"\x00QUJDREVGSA==\xff")).close_code == 1009


def test_oversized_frame_is_refused_before_it_ends() -> None:
    """The limit bounds memory: the codec does not wait for the 0xFF to refuse."""
    hixie_codec = codec(8)
    assert hixie_codec.receive(b"\x00QUJD") == [Data(b"ABC")]
    assert hixie_codec.receive(b"REVG") == [Data(b"DEF")]
    violation = violation_of(hixie_codec.receive(b"S"))
    assert violation.close_code == 1009
    assert "maximum message size (8 bytes)" in violation.reason


@pytest.mark.parametrize("cut", range(14))
def test_oversized_frame_gets_1009_however_it_is_cut(cut: int) -> None:
    """Same bytes, same outcome: the text within the limit is decoded first, in one
    read as in two, so invalid base64 beyond the limit never turns 1009 into 1007."""
    stream = b"\x00QUJDREVG!!!!\xff"
    assert run(stream, [cut], limit=8) == run(stream, [], limit=8) == (b"ABCDEF", 1009)


def test_size_limit_applies_per_frame() -> None:
    hixie_codec = codec(8)
    assert payload_of(hixie_codec.receive(b"\x00QUJDREVG\xff" * 50)) == b"ABCDEF" * 50


# ---------------------------------------------------------------- fuzz


@st.composite
def near_valid_streams(draw: st.DrawFn) -> bytes:
    """Hixie frames, mostly valid, often not: bad types, bad base64, bad UTF-8,
    frames over the 64-byte limit of ``run``, closes, trailing garbage."""
    stream = b""
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            stream += bytes([draw(st.integers(0, 255))])
        elif kind == 1:
            stream += b"\xff" + draw(st.sampled_from([b"\x00", b"\x01", b""]))
        else:
            text = base64.b64encode(draw(st.binary(max_size=70)))
            if draw(st.integers(0, 3)) == 0:
                at = draw(st.integers(0, len(text)))
                bad = draw(st.sampled_from([b"!", b"=", b"\xc3", b"\xe2\x82"]))
                text = text[:at] + bad + text[at:]
            stream += b"\x00" + text + (b"\xff" if draw(st.integers(0, 5)) else b"")
    return stream


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=120), near_valid_streams()), st.data())
def test_any_input_any_split_gives_the_same_outcome(stream: bytes, data: st.DataObject) -> None:
    """Nothing is raised; the ending (Close, close code, or still open) does not
    depend on the cuts, and neither do the relayed bytes unless the ending is 1007
    (a bad frame may be relayed up to its bad group, which depends on the reads)."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    whole, ending = run(stream, [])
    split, split_ending = run(stream, cuts)
    assert split_ending == ending
    assert ending in (None, 1002, 1007, 1009) or isinstance(ending, Close)
    if ending != 1007:
        assert split == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6), st.data())
def test_any_split_of_valid_frames_round_trips(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    hixie_codec = codec()
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        events += hixie_codec.receive(wire[start:end])
    assert payload_of(events) == b"".join(payloads)
    assert all(isinstance(event, Data) and event.payload for event in events)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_encode_then_receive_round_trips(payload: bytes) -> None:
    wire = b"".join(bytes(piece) for piece in codec().encode_data(payload))
    assert payload_of(codec().receive(wire)) == payload


def test_hixie75_without_origin_is_refused_with_the_reason() -> None:
    """Draft-75's answer must echo the Origin: a bare ``Upgrade: websocket`` is no
    draft-75 request (most likely an RFC 6455 client missing its key and version)."""
    headers = dict(request75().headers)
    del headers["origin"]
    with pytest.raises(HandshakeError) as refused:
        handshake.accept(UpgradeRequest("GET", "/demo", headers), b"", OPTIONS)
    assert refused.value.status == 400
    assert refused.value.reason == (
        "Hixie-75 WebSocket upgrade needs an Origin header "
        "(RFC 6455 needs Sec-WebSocket-Key and Sec-WebSocket-Version)")


@pytest.mark.parametrize(("length", "allowed"), [("8", True), ("0", False), ("9", False)])
def test_hixie76_challenge_may_be_announced_as_its_content_length(
    length: str, allowed: bool
) -> None:
    """Hixie-76's 8 bytes are the only body an upgrade may carry; draft-75 has none."""
    request = request76(extra={"content-length": length})
    if allowed:
        assert handshake.body_length(request) == 8
    else:
        with pytest.raises(HandshakeError):
            handshake.body_length(request)
    with pytest.raises(HandshakeError):
        handshake.body_length(request75(extra={"content-length": "8"}))
