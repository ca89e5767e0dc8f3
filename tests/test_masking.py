"""unmask: the RFC example, both implementations against each other, pieces and offsets."""

from __future__ import annotations

import random

import pytest

from websockify.protocol import masking
from websockify.protocol.masking import unmask, unmask_python

MASK = bytes.fromhex("37fa213d")
#: Lengths around every boundary the implementations care about: the 8-byte lanes,
#: the numpy threshold and the 16/64-bit frame lengths.
LENGTHS = sorted(
    {*range(0, 40), 63, 64, 65, 125, 126, 127, 1023, 1024, 1025, 65535, 65536, 65537}
    | {masking.NUMPY_THRESHOLD + delta for delta in range(-9, 10)}
)

needs_numpy = pytest.mark.skipif(not masking.HAVE_NUMPY, reason="numpy is not installed")


def reference(data: bytes, mask: bytes, offset: int) -> bytes:
    """The definition of RFC 6455 section 5.3, one byte at a time."""
    return bytes(byte ^ mask[(offset + i) % 4] for i, byte in enumerate(data))


def test_rfc_example_hello() -> None:
    assert bytes(unmask(bytes.fromhex("7f9f4d5158"), MASK)) == b"Hello"


def test_masking_twice_is_identity() -> None:
    data = random.Random(1).randbytes(5000)
    assert bytes(unmask(unmask(data, MASK, 3), MASK, 3)) == data


@pytest.mark.parametrize("offset", range(8))
def test_python_matches_definition(offset: int) -> None:
    rng = random.Random(offset)
    for length in [n for n in LENGTHS if n < 5000]:
        data = rng.randbytes(length)
        assert unmask_python(data, MASK, offset) == reference(data, MASK, offset), length


@needs_numpy
@pytest.mark.parametrize("offset", range(4))
def test_numpy_matches_python_for_all_lengths(offset: int) -> None:
    rng = random.Random(offset)
    for length in LENGTHS:
        data = rng.randbytes(length + 3)
        # An unaligned slice, as the codec passes (payloads start after a header).
        piece = memoryview(data)[3:]
        mask = rng.randbytes(4)
        expected = unmask_python(piece, mask, offset)
        assert bytes(masking.unmask_numpy(piece, mask, offset)) == expected, length
        assert bytes(unmask(piece, mask, offset)) == expected, length


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_any_bytes_like(kind: type) -> None:
    data = random.Random(2).randbytes(3000)
    for length in (5, 3000):
        assert bytes(unmask(kind(data[:length]), MASK, 1)) == reference(data[:length], MASK, 1)


def test_pieces_with_offsets_equal_the_whole() -> None:
    """The codec unmasks a payload piece by piece, carrying the offset along."""
    data = random.Random(3).randbytes(10_000)
    whole = reference(data, MASK, 0)
    for cuts in ([1, 2, 3], [7, 1600, 1601, 9999], [4096, 8192]):
        out = b""
        start = 0
        for stop in [*cuts, len(data)]:
            out += bytes(unmask(data[start:stop], MASK, start % 4))
            start = stop
        assert out == whole


def test_empty() -> None:
    assert bytes(unmask(b"", MASK, 2)) == b""


@pytest.mark.parametrize("length", [10, 70_000])
def test_result_does_not_alias_the_input(length: int) -> None:
    data = bytearray(random.Random(4).randbytes(length))
    result = unmask(data, MASK)
    before = bytes(result)
    data[:] = bytes(length)
    assert bytes(result) == before


@needs_numpy
def test_threshold_picks_the_implementation() -> None:
    small = unmask(bytes(masking.NUMPY_THRESHOLD - 1), MASK)
    large = unmask(bytes(masking.NUMPY_THRESHOLD), MASK)
    assert isinstance(small, bytes)
    assert isinstance(large, memoryview)
    assert large.format == "B"
    assert len(large) == masking.NUMPY_THRESHOLD
