"""Which WebSocket draft an upgrade request speaks, and the answer to it.

The server parses the HTTP request head, builds an :class:`UpgradeRequest`, reads
``body_length(request)`` more bytes (Hixie-76 sends 8 after its headers; any other
body is refused) and calls :func:`accept`.  The result carries the exact response
bytes and the codec for the rest of the connection; a refusal is a
:class:`~websockify.errors.HandshakeError`.  The value types live in the leaf module
:mod:`~websockify.protocol.handshake_types` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from websockify.errors import HandshakeError
from websockify.protocol import hixie, rfc6455
from websockify.protocol.handshake_types import HandshakeOptions, Upgrade, UpgradeRequest

__all__ = [
    "HIXIE76_BODY_LENGTH", "HandshakeOptions", "Upgrade", "UpgradeRequest", "accept",
    "body_length", "error_response", "is_hixie", "is_upgrade",
]

#: Hixie-76 sends an 8-byte challenge after its headers.
HIXIE76_BODY_LENGTH = 8


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """True when the request asks for a WebSocket (any draft)."""
    return "websocket" in headers.get("upgrade", "").lower()


def is_hixie(headers: Mapping[str, str]) -> bool:
    """Hixie requests carry no Sec-WebSocket-Version and no Sec-WebSocket-Key."""
    return "sec-websocket-version" not in headers and "sec-websocket-key" not in headers


def body_length(request: UpgradeRequest) -> int:
    """How many bytes after the headers belong to the handshake (8 for Hixie-76).

    An upgrade carries no request body: a ``Transfer-Encoding``, or a
    ``Content-Length`` other than 0 (Hixie-76: 8), is refused with 400 before a
    byte of it is read, so a body trickled in slowly cannot hold the connection.
    """
    headers = request.headers
    hixie76 = (is_hixie(headers) and "sec-websocket-key1" in headers
               and "sec-websocket-key2" in headers)
    expected = HIXIE76_BODY_LENGTH if hixie76 else 0
    if "transfer-encoding" in headers:
        raise HandshakeError("a WebSocket upgrade request carries no body "
                             "(Transfer-Encoding is not allowed)")
    announced = headers.get("content-length")
    if announced is not None and announced.strip() != str(expected):
        raise HandshakeError("a WebSocket upgrade request carries no body "
                             f"(Content-Length {announced.strip()[:20]!r})")
    return expected


def accept(request: UpgradeRequest, body: bytes, options: HandshakeOptions) -> Upgrade:
    """Answer an upgrade request; raises HandshakeError with the status to send."""
    if request.method != "GET":
        raise HandshakeError("WebSocket upgrade needs GET", status=405)
    if not is_hixie(request.headers):
        rfc6455.check_request(request)
        return rfc6455.accept(request, options)
    if not options.allow_hixie:
        raise HandshakeError(
            "Hixie WebSocket drafts are turned off (--no-hixie)",
            status=426,
            headers=(("Sec-WebSocket-Version", rfc6455.SUPPORTED_VERSIONS_HEADER),),
        )
    return hixie.accept(request, body, options)


def error_response(error: HandshakeError) -> bytes:
    """The complete HTTP response refusing an upgrade: status, reason text, close."""
    try:
        phrase = HTTPStatus(error.status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{error.reason}\n".encode()
    lines = [
        f"HTTP/1.1 {error.status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
