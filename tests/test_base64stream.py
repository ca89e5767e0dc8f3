"""Base64Decoder: strict alphabet, padding only at a message end, any split of the text."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from websockify.errors import FrameError
from websockify.protocol.base64stream import Base64Decoder


def decode_in_pieces(text: bytes, cuts: list[int]) -> bytes:
    decoder = Base64Decoder()
    out = b""
    start = 0
    for stop in [*sorted(cuts), len(text)]:
        out += decoder.feed(text[start:stop])
        start = stop
    decoder.end_message()
    return out


def fails_with_1007(text: bytes, cuts: list[int]) -> None:
    with pytest.raises(FrameError) as caught:
        decode_in_pieces(text, cuts)
    assert caught.value.close_code == 1007


@pytest.mark.parametrize(
    ("text", "data"),
    [
        (b"", b""),
        (b"SGVsbG8=", b"Hello"),
        (b"SGVsbG8h", b"Hello!"),
        (b"SGk=", b"Hi"),
        (b"SA==", b"H"),
    ],
)
def test_decodes_at_every_split(text: bytes, data: bytes) -> None:
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert decode_in_pieces(text, [i, j]) == data


def test_decodes_groups_as_soon_as_they_are_complete() -> None:
    decoder = Base64Decoder()
    assert decoder.feed(b"SGV") == b""
    assert decoder.feed(b"sbG8") == b"Hel"
    assert decoder.feed(memoryview(b"=")) == b"lo"
    decoder.end_message()


def test_messages_are_independent() -> None:
    decoder = Base64Decoder()
    assert decoder.feed(b"SGk=") == b"Hi"
    decoder.end_message()
    # The padding of the first message does not forbid data in the second.
    assert decoder.feed(b"SGk=") == b"Hi"
    decoder.end_message()


@pytest.mark.parametrize(
    "text",
    [
        b"SGVsbG8",  # a group left unfinished at the end of the message
        b"S",
        b"SGVs\nbG8=",  # white space
        b"SGVs bG8=",
        b"SGV*bG8=",  # outside the alphabet
        b"SGVs-_8=",  # the URL-safe alphabet
        b"SA==SGk=",  # padding inside the message
        b"SA==S",
        b"S===",
        b"SG=k",
        b"====",
    ],
)
def test_invalid_at_every_split(text: bytes) -> None:
    for i in range(len(text) + 1):
        fails_with_1007(text, [i])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_round_trip_any_split(data: bytes, cuts: list[int]) -> None:
    text = base64.b64encode(data)
    assert decode_in_pieces(text, [min(cut, len(text)) for cut in cuts]) == data


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_random_text_decodes_or_fails_with_1007(text: bytes, cuts: list[int]) -> None:
    cuts = [min(cut, len(text)) for cut in cuts]
    try:
        strict = base64.b64decode(text, validate=True)
    except ValueError:
        strict = None
    if strict is None or len(text) % 4:
        fails_with_1007(text, cuts)
    else:
        assert decode_in_pieces(text, cuts) == strict


@pytest.mark.parametrize("cut", range(6))
def test_data_after_padding_fails_when_it_arrives_however_cut(cut: int) -> None:
    """Not only at the message end: a frame without its end fails the same way in
    one read as in two (the Hixie codec relies on it)."""
    decoder = Base64Decoder()
    with pytest.raises(FrameError) as caught:
        decoder.feed(b"SA==S"[:cut])
        decoder.feed(b"SA==S"[cut:])
    assert caught.value.close_code == 1007
