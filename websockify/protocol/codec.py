"""The interface between the relay and a wire format (HyBi or Hixie).

The relay holds one :class:`Codec` per connection and never learns which draft
it talks to.  ``receive`` turns client bytes into events whose ``Data`` payloads
are already decoded for the target (unmasked, base64-decoded); the ``encode_*``
methods turn target bytes and control messages into wire bytes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

#: Anything the socket layer can send without a copy.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes for the target, in order; a message may arrive as several of these."""

    payload: Buffer


@dataclass(frozen=True, slots=True)
class Ping:
    """The client pinged; the relay answers with ``encode_pong(payload)``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The client answered a ping (or sent an unsolicited pong)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The client started (or answered) the closing handshake.

    ``code`` is None when the client sent no status code (or speaks Hixie).
    """

    code: int | None
    reason: str = ""


Event = Data | Ping | Pong | Close


class Codec(abc.ABC):
    """One connection's wire format, in both directions.

    ``receive`` raises :class:`websockify.errors.FrameError` on any violation; the
    relay then sends ``encode_close(error.close_code, error.reason)`` and hangs up.
    After a :class:`Close` event the codec ignores further input.
    """

    #: The negotiated subprotocol: "binary" or "base64" (or None when none was offered).
    subprotocol: str | None
    #: False for drafts without ping frames (Hixie): heartbeats are then skipped.
    supports_ping: bool = True

    @abc.abstractmethod
    def receive(self, data: Buffer) -> list[Event]:
        """Parse client bytes; returns the complete events they finish, in order."""

    @abc.abstractmethod
    def encode_data(self, payload: Buffer) -> list[Buffer]:
        """Frame target bytes; returns wire pieces to send in order (no payload copy)."""

    @abc.abstractmethod
    def encode_ping(self, payload: bytes = b"") -> bytes:
        """A ping frame (only called when ``supports_ping``)."""

    @abc.abstractmethod
    def encode_pong(self, payload: bytes) -> bytes:
        """The answer to a :class:`Ping`."""

    @abc.abstractmethod
    def encode_close(self, code: int = 1000, reason: str = "") -> bytes:
        """A close frame; ``reason`` is truncated to fit a control frame."""
