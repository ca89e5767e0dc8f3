"""The interface between the relay and a wire format (HyBi or Hixie).

The connection (:mod:`websockify.protocol.connection`) holds one :class:`Codec` and
never learns which draft it talks to.  ``receive`` turns client bytes into events
whose ``Data`` payloads are already decoded for the target (unmasked,
base64-decoded); the ``encode_*`` methods turn target bytes and control messages
into wire bytes.  A violation is an event too (:class:`Violation`, always the
last): ``receive`` never raises for what the peer sent, so the events that came
before a bad frame are returned like any others.
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


@dataclass(frozen=True, slots=True)
class Violation:
    """The client broke the protocol: the connection is closed with ``close_code``.

    Always the last event of a ``receive``; the codec ignores all input after it.
    ``reason`` may go on the wire in the Close frame, so it names only the peer's fault.
    """

    reason: str
    close_code: int


Event = Data | Ping | Pong | Close | Violation


class Codec(abc.ABC):
    """One connection's wire format, in both directions.

    ``receive`` reports a violation as a final :class:`Violation` event; after it, or
    after a :class:`Close` event, the codec ignores further input.
    """

    #: The negotiated subprotocol: "binary" or "base64" (or None when none was offered).
    subprotocol: str | None
    #: False for drafts without ping frames (Hixie): heartbeats are then skipped.
    supports_ping: bool = True
    #: Frames the client started so far (for the connection's counters).
    frames_received: int = 0

    @abc.abstractmethod
    def receive(self, data: Buffer) -> list[Event]:
        """Parse client bytes; returns the events they finish, in order.

        ``data`` is only read during the call: payloads never share its memory, so
        the caller may reuse its buffer for the next read.
        """

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
