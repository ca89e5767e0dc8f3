"""read_headers must build exactly what gevent's header parser builds, for any input.

The fast reader is only an optimisation: same (name, value) pairs in the same
order, same defects, same status, same exceptions, and the same bytes left in
the stream for the body and the frames after it.
"""

from __future__ import annotations

import io
from typing import Any

from gevent.pywsgi import headers_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from websockify.http_headers import (
    _SHARED,
    MAX_HEADERS,
    MAX_LINE,
    SHARED_MAX_ENTRIES,
    SHARED_MAX_LENGTH,
    read_headers,
)

#: Bytes that make header lines odd: separators, blanks, every line-breaking
#: character str.splitlines knows, a control, DEL and high latin-1.
TRICKY = b":: \t\r\n\x0b\x0c\x1c\x1d\x1e\x85\x00\x7f\xa0\xff-_aZ09"
UPGRADE = (
    b"Host: 127.0.0.1:6080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: binary\r\n\r\n"
)


def outcome(parse: Any, data: bytes) -> tuple[object, bytes]:
    """What a parser makes of ``data``, and what it leaves unread."""
    stream = io.BufferedReader(io.BytesIO(data))
    try:
        message = parse(stream)
    except Exception as exc:  # whatever it is, the same must come from both
        return ("raised", type(exc), str(exc)), stream.read()
    return (message.items(), [repr(d) for d in message.defects], message.status,
            message.get_payload(), message.get_unixfrom(), type(message)), stream.read()


def assert_same(data: bytes) -> None:
    assert outcome(read_headers, data) == outcome(headers_factory, data)


def test_an_upgrade_request_is_read_with_the_frame_after_it_left_in_the_stream() -> None:
    frame = b"\x82\x80abcd"
    message, rest = outcome(read_headers, UPGRADE + frame)
    assert isinstance(message, tuple) and message[0][1] == ("Upgrade", "websocket")
    assert rest == frame
    assert_same(UPGRADE + frame)


def test_values_keep_trailing_blanks_and_lose_leading_ones() -> None:
    message, _ = outcome(read_headers, b"A: \t spaced  \r\nB:tight\n\n")
    assert isinstance(message, tuple) and message[0] == [("A", "spaced  "), ("B", "tight")]


def test_odd_blocks_match_gevent() -> None:
    for data in [
        b"", b"\r\n", b"A: b", b"A: b\r\n", b"A: b\r\n folded\r\n\r\n", b" lead: x\r\n\r\n",
        b"no colon\r\nB: c\r\n\r\n", b": no name\r\n\r\n", b"From someone\r\nA: b\r\n\r\n",
        b"A: b\rc\r\n\r\n", b"A: b\x85c\r\n\r\n", b"Bad Name: x\r\n\r\n", b"A:b\r\nA: c\r\n\r\n",
    ]:
        assert_same(data)


def test_limits_match_gevent() -> None:
    assert_same(b"Long: " + b"x" * MAX_LINE + b"\r\n\r\n")
    assert_same(b"Long: " + b"x" * (MAX_LINE - 8) + b"\r\n\r\n")
    for count in (MAX_HEADERS - 1, MAX_HEADERS, MAX_HEADERS + 1):
        assert_same(b"".join(b"H%d: v\r\n" % i for i in range(count)) + b"\r\n")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=12) | st.sampled_from([bytes([b]) for b in TRICKY]),
                max_size=30))
def test_any_bytes_match_gevent(pieces: list[bytes]) -> None:
    assert_same(b"".join(pieces))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(st.sampled_from("aZ-_: \t\x85é"), max_size=6),
                          st.text(st.sampled_from("aZ:; \t\r\n\x0b\x85é"), max_size=8)),
                max_size=6),
       st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b""]))
def test_near_valid_blocks_match_gevent(fields: list[tuple[str, str]], end: bytes) -> None:
    block = b"".join(f"{name}:{value}\r\n".encode("latin-1", "replace") for name, value in fields)
    assert_same(block + end + b"\x82\x80rest")


def test_repeated_header_strings_are_shared_and_the_table_stays_bounded() -> None:
    first, _ = outcome(read_headers, UPGRADE)
    second, _ = outcome(read_headers, UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==",
                                                      b"AQIDBAUGBwgJCgsMDQ4PEA=="))
    assert isinstance(first, tuple) and isinstance(second, tuple)
    host_a, host_b = first[0][0], second[0][0]
    assert host_a == host_b and host_a[0] is host_b[0] and host_a[1] is host_b[1]
    for i in range(SHARED_MAX_ENTRIES + 10):
        assert_same(b"X-Junk-%d: %d\r\n\r\n" % (i, i))
    assert len(_SHARED) <= SHARED_MAX_ENTRIES
    assert not any(len(raw) > SHARED_MAX_LENGTH for raw in _SHARED)
