"""Property tests of HybiCodec.receive: any input, any split.

1. Random bytes and random near-valid frames, cut anywhere, raise nothing (a
   violation is a final event), and the outcome does not depend on where the
   input was cut.
2. Random valid frame sequences (fragmented messages, interleaved control frames,
   lengths at every encoding boundary), cut anywhere, reproduce exactly the sent
   payloads, in order, once; bytes after a Close frame are never parsed.
"""

from __future__ import annotations

import base64
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import client_frame
from tests.test_hybi import Output, normalize, run
from websockify.protocol.codec import Close, Data, Event, Ping, Pong

SUBPROTOCOLS = st.sampled_from(["binary", None, "base64"])
#: Frame lengths at the boundaries of the 7-, 16- and 64-bit length encodings.
BOUNDARY_LENGTHS = [0, 1, 125, 126, 127, 65535, 65536]
#: Text of 1- to 4-byte UTF-8 characters, so fragments cut characters apart.
CHARACTERS = "aZ é€😀"
#: Bytes the parser would reject at once if it ever read them.
POISON = b"\x82\x00unmasked"


def cuts_of(length: int) -> st.SearchStrategy[list[int]]:
    """Up to 8 places to cut an input of ``length`` bytes."""
    return st.lists(st.integers(0, length), max_size=8)


# -- 1. anything goes in, at most a Violation comes out --------------------------------


@st.composite
def near_valid_frames(draw: st.DrawFn) -> bytes:
    """Frames with random header bits and payloads: mostly valid, often not."""
    stream = b""
    for _ in range(draw(st.integers(1, 6))):
        first = draw(st.sampled_from([0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A]))
        if draw(st.integers(0, 9)) == 0:
            first = draw(st.integers(0, 255))
        payload = draw(
            st.one_of(
                st.binary(max_size=140),
                st.text(CHARACTERS, max_size=40).map(str.encode),
                st.text(max_size=20).map(lambda text: base64.b64encode(text.encode())),
                st.tuples(st.integers(0, 5000), st.text(max_size=10)).map(
                    lambda close: struct.pack("!H", close[0]) + close[1].encode()
                ),
            )
        )
        mask = None if draw(st.integers(0, 19)) == 0 else draw(st.binary(min_size=4, max_size=4))
        stream += client_frame(
            first & 0x0F, payload, fin=bool(first & 0x80), mask=mask, rsv=(first >> 4) & 7
        )
    if draw(st.booleans()):
        stream += draw(st.binary(max_size=20))
    return stream


def check_any_input(stream: bytes, cuts: list[int], subprotocol: str | None) -> None:
    whole, code = run(stream, [], subprotocol, limit=300)
    split, split_code = run(stream, cuts, subprotocol, limit=300)
    assert code in (None, 1002, 1007, 1009)
    assert split_code == code
    if code != 1007:  # a bad text message may be relayed up to its bad bytes
        assert split == whole


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=st.binary(max_size=200), subprotocol=SUBPROTOCOLS)
def test_random_bytes_end_in_a_violation_at_most(
    data: st.DataObject, stream: bytes, subprotocol: str | None
) -> None:
    check_any_input(stream, data.draw(cuts_of(len(stream))), subprotocol)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=near_valid_frames(), subprotocol=SUBPROTOCOLS)
def test_near_valid_frames_end_in_a_violation_at_most(
    data: st.DataObject, stream: bytes, subprotocol: str | None
) -> None:
    check_any_input(stream, data.draw(cuts_of(len(stream))), subprotocol)


# -- 2. valid frames come out exactly as they went in ----------------------------------


def utf8_of_length(rng: random.Random, length: int) -> bytes:
    """Random UTF-8 text of exactly ``length`` bytes."""
    out = b""
    while len(out) < length:
        char = rng.choice(CHARACTERS).encode()
        out += char if len(out) + len(char) <= length else b"a"
    return out


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[str | None, bytes, Output]:
    """A subprotocol, the client's wire bytes and what the relay must see for them."""
    subprotocol = draw(SUBPROTOCOLS)
    rng = random.Random(draw(st.integers(0, 2**32)))
    length = st.one_of(st.sampled_from(BOUNDARY_LENGTHS), st.integers(0, 300))
    stream = b""
    expected: list[Event] = []

    def send(opcode: int, payload: bytes, fin: bool = True) -> None:
        nonlocal stream
        stream += client_frame(opcode, payload, fin=fin, mask=rng.randbytes(4))

    def control() -> None:
        opcode, event = draw(st.sampled_from([(0x9, Ping), (0xA, Pong)]))
        payload = rng.randbytes(draw(st.sampled_from([0, 1, 125])))
        send(opcode, payload)
        expected.append(event(payload))

    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 3)) == 0:
            control()
            continue
        sizes = draw(st.lists(length, min_size=1, max_size=4))
        opcode = draw(st.sampled_from([0x1, 0x2]))
        total = sum(sizes)
        if opcode == 0x1 and subprotocol == "base64":
            relayed = rng.randbytes((3 * total + 3) // 4)
            message = base64.b64encode(relayed)
            sizes[-1] += len(message) - total  # the last fragment takes the rounding

            def decoded(end: int, relayed: bytes = relayed) -> int:
                """How much is decoded once ``end`` characters arrived: whole groups."""
                return min(len(relayed), end // 4 * 3)

        else:
            message = rng.randbytes(total) if opcode == 0x2 else utf8_of_length(rng, total)
            relayed = message

            def decoded(end: int) -> int:
                return end

        start = 0
        for index, size in enumerate(sizes):
            if index and draw(st.integers(0, 4)) == 0:
                control()
            final = index == len(sizes) - 1
            send(opcode if index == 0 else 0x0, message[start : start + size], fin=final)
            expected.append(Data(relayed[decoded(start) : decoded(start + size)]))
            start += size
    if draw(st.booleans()):
        send(0x8, struct.pack("!H", 1000) + b"bye")
        expected.append(Close(1000, "bye"))
        stream += POISON
    return subprotocol, stream, normalize(expected)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), case=valid_streams())
def test_valid_frames_reproduce_the_payloads_exactly_once(
    data: st.DataObject, case: tuple[str | None, bytes, Output]
) -> None:
    subprotocol, stream, expected = case
    assert run(stream, data.draw(cuts_of(len(stream))), subprotocol) == (expected, None)
