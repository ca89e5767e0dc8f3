"""Which subprotocol to speak, from the client's Sec-WebSocket-Protocol offer.

"binary" relays frames as they are; "base64" is for old clients (noVNC before
binary support) that can only send text, and carries base64 in text frames.  A
client that offers nothing gets binary frames and no protocol header back.
"""

from __future__ import annotations

import re

from websockify.errors import HandshakeError

#: What we speak, best first.
SUPPORTED = ("binary", "base64")
#: Longest piece of the client's offer echoed in a refusal.
_ECHO_LIMIT = 200
#: Characters that cannot be in a token (RFC 9110 section 5.6.2); echoed as "?" so a
#: refusal never reflects markup or control characters to the client.
_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z, ]")


def parse_offer(offer: str | None) -> list[str]:
    """The offered names, in order: split on commas, white space trimmed, empties dropped."""
    if not offer:
        return []
    return [name for name in (part.strip() for part in offer.split(",")) if name]


def choose(offer: str | None) -> str | None:
    """The subprotocol to answer with, or None when the client offered none.

    Subprotocol names are case-sensitive tokens (RFC 6455 section 4.1), and our
    preference, not the client's order, decides.  An offer naming only protocols
    we do not speak is refused with 400 rather than silently answered without a
    protocol, which a conforming client would fail on anyway.
    """
    offered = parse_offer(offer)
    if not offered:
        return None
    for name in SUPPORTED:
        if name in offered:
            return name
    shown = _NOT_TOKEN.sub("?", ", ".join(offered))
    if len(shown) > _ECHO_LIMIT:
        shown = shown[:_ECHO_LIMIT] + "..."
    raise HandshakeError(
        f"unsupported WebSocket subprotocol {shown!r}; this server speaks "
        + " or ".join(repr(name) for name in SUPPORTED),
        status=400,
    )
