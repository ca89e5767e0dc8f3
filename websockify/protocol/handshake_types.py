"""The values a WebSocket handshake takes and gives, shared by every draft's module.

A leaf: it imports nothing of the handshake modules, so :mod:`handshake` (which
chooses the draft) and :mod:`rfc6455` / :mod:`hixie` (which answer it) all import
these types without importing each other in a circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from websockify.protocol.codec import Codec
from websockify.settings import Limits

_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """The parts of an HTTP request that a WebSocket handshake looks at.

    ``headers`` maps lower-case names to values; repeated headers are joined with
    ", " as RFC 9110 allows.  ``secure`` says whether the connection is TLS, which
    the Hixie drafts echo as ws:// or wss:// in their Location header.
    ``http_version`` is the request line's protocol ("HTTP/1.1"): RFC 6455 needs
    HTTP/1.1 or later.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    secure: bool = False
    http_version: str = "HTTP/1.1"


@dataclass(frozen=True, slots=True)
class HandshakeOptions:
    """Server settings the handshake needs (defaults: :class:`~websockify.settings.Limits`)."""

    max_message_size: int = _DEFAULT_LIMITS.max_message_size
    allow_hixie: bool = True


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An accepted upgrade: send ``response`` verbatim, then speak ``codec``."""

    response: bytes
    codec: Codec
    #: "13", "8", "7", "hixie-76" or "hixie-75": for logs.
    version: str
