"""The RFC 6455 opening handshake (and HyBi drafts 7 and 8, which frame the same way).

:func:`accept` checks the upgrade request and builds the exact 101 response; the
connection then speaks :class:`~websockify.protocol.hybi.HybiCodec`.  Offered
extensions (permessage-deflate) are ignored: the relay forwards bytes and gains
nothing from compressing them twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from websockify.errors import HandshakeError
from websockify.protocol import subprotocol
from websockify.protocol.handshake_types import HandshakeOptions, Upgrade, UpgradeRequest
from websockify.protocol.hybi import HybiCodec

#: The versions we speak, for Sec-WebSocket-Version in a refusal.
SUPPORTED_VERSIONS_HEADER = "13, 8, 7"
SUPPORTED_VERSIONS = frozenset(SUPPORTED_VERSIONS_HEADER.split(", "))
#: The GUID of RFC 6455 section 1.3, hashed with the client's key.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY_LENGTH = 16
_HTTP_VERSION = re.compile(r"HTTP/(\d{1,3})\.(\d{1,3})")


def _tokens(value: str) -> set[str]:
    """A comma-separated header value as a set of lower-case tokens."""
    return {token.strip().lower() for token in value.split(",")}


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_key(key: str | None) -> str:
    """The client's key, which must be base64 of exactly 16 bytes."""
    if key is None:
        raise HandshakeError("missing Sec-WebSocket-Key header")
    key = key.strip()
    try:
        nonce = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        nonce = b""
    if len(nonce) != _KEY_LENGTH:
        raise HandshakeError("Sec-WebSocket-Key must be base64 of 16 bytes")
    return key


def check_request(request: UpgradeRequest) -> None:
    """RFC 6455 section 4.1's demands on the HTTP request itself: HTTP/1.1 or later,
    with a Host.  Checked by :func:`websockify.protocol.handshake.accept`; a caller of
    :func:`accept` with headers alone (upstream's ``WebSocket.accept``) leaves them
    to its HTTP layer."""
    _check_http_version(request.http_version)
    if not request.headers.get("host", "").strip():
        raise HandshakeError("a WebSocket upgrade needs a Host header")


def _check_http_version(version: str) -> None:
    """RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 (or later) request."""
    match = _HTTP_VERSION.fullmatch(version)
    if match is None or (int(match[1]), int(match[2])) < (1, 1):
        raise HandshakeError(
            f"a WebSocket upgrade needs HTTP/1.1 or later, not {version[:20]!r}")


def accept(request: UpgradeRequest, options: HandshakeOptions) -> Upgrade:
    """Answer an RFC 6455 (or HyBi 7/8) upgrade; raises HandshakeError(400) on a bad one."""
    headers = request.headers
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError('the Upgrade header must name "websocket"')
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError('the Connection header must contain "Upgrade"')
    version = headers.get("sec-websocket-version", "").strip()
    if version not in SUPPORTED_VERSIONS:
        raise HandshakeError(
            f"unsupported WebSocket version; this server speaks {SUPPORTED_VERSIONS_HEADER}",
            headers=(("Sec-WebSocket-Version", SUPPORTED_VERSIONS_HEADER),),
        )
    key = _check_key(headers.get("sec-websocket-key"))
    chosen = subprotocol.choose(headers.get("sec-websocket-protocol"))
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if chosen is not None:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    response = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return Upgrade(
        response=response,
        codec=HybiCodec(chosen, options.max_message_size),
        version=version,
    )
