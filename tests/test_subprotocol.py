"""choose(): which subprotocol answers a Sec-WebSocket-Protocol offer."""

from __future__ import annotations

import pytest

from websockify.errors import HandshakeError
from websockify.protocol.subprotocol import choose, parse_offer


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        ("binary", "binary"),
        ("base64", "base64"),
        ("base64, binary", "binary"),  # upstream answers 400 here: it does not trim
        ("binary,base64", "binary"),
        (" base64 ", "base64"),
        ("chat, base64", "base64"),
        ("x, , binary,", "binary"),
        (None, None),
        ("", None),
        (" , ,", None),
    ],
)
def test_choose(offer: str | None, chosen: str | None) -> None:
    assert choose(offer) == chosen


def test_parse_offer_keeps_order_and_drops_empties() -> None:
    assert parse_offer("  a ,b,,\tc  ,") == ["a", "b", "c"]


@pytest.mark.parametrize("offer", ["chat", "BINARY", "chat, superchat", "binary64"])
def test_unsupported_offer_is_400_naming_both_sides(offer: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        choose(offer)
    error = caught.value
    assert error.status == 400
    for name in offer.split(", "):
        assert name in error.reason
    assert "'binary'" in error.reason and "'base64'" in error.reason


def test_refusal_does_not_reflect_markup_or_huge_offers() -> None:
    with pytest.raises(HandshakeError) as caught:
        choose("<script>alert(1)</script>")
    assert "<" not in caught.value.reason and ">" not in caught.value.reason
    with pytest.raises(HandshakeError) as caught:
        choose("x" * 10_000)
    assert len(caught.value.reason) < 300
