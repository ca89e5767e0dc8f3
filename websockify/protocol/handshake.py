"""Which WebSocket draft an upgrade request speaks, and the answer to it.

The server parses the HTTP request head, builds an :class:`UpgradeRequest`, reads
``body_length(request)`` more bytes (Hixie-76 sends 8 after its headers) and calls
:func:`accept`.  The result carries the exact response bytes and the codec for the
rest of the connection; a refusal is a :class:`~websockify.errors.HandshakeError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from websockify.errors import HandshakeError
from websockify.protocol import hixie, rfc6455
from websockify.protocol.codec import Codec

#: Hixie-76 sends an 8-byte challenge after its headers.
HIXIE76_BODY_LENGTH = 8


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """The parts of an HTTP request that a WebSocket handshake looks at.

    ``headers`` maps lower-case names to values; repeated headers are joined with
    ", " as RFC 9110 allows.  ``secure`` says whether the connection is TLS, which
    the Hixie drafts echo as ws:// or wss:// in their Location header.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    secure: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeOptions:
    """Server settings the handshake needs."""

    max_message_size: int = 16 * 1024 * 1024
    allow_hixie: bool = True


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An accepted upgrade: send ``response`` verbatim, then speak ``codec``."""

    response: bytes
    codec: Codec
    #: "13", "8", "7", "hixie-76" or "hixie-75": for logs.
    version: str


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """True when the request asks for a WebSocket (any draft)."""
    return "websocket" in headers.get("upgrade", "").lower()


def is_hixie(headers: Mapping[str, str]) -> bool:
    """Hixie requests carry no Sec-WebSocket-Version and no Sec-WebSocket-Key."""
    return "sec-websocket-version" not in headers and "sec-websocket-key" not in headers


def body_length(request: UpgradeRequest) -> int:
    """How many bytes after the headers belong to the handshake (8 for Hixie-76)."""
    headers = request.headers
    if is_hixie(headers) and "sec-websocket-key1" in headers and "sec-websocket-key2" in headers:
        return HIXIE76_BODY_LENGTH
    return 0


def accept(request: UpgradeRequest, body: bytes, options: HandshakeOptions) -> Upgrade:
    """Answer an upgrade request; raises HandshakeError with the status to send."""
    if request.method != "GET":
        raise HandshakeError("WebSocket upgrade needs GET", status=405)
    if not is_hixie(request.headers):
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
