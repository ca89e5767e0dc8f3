"""The library server's one view of the sans-I/O frame codecs.

The library layer (:mod:`websockify.websocket` and the modules built on it) talks to
:mod:`websockify.protocol.codec` only through :class:`FrameStream`, so a change of the
codec interface is absorbed here.  What the layer needs is small: client bytes in,
the decoded data and control messages out (a protocol violation reported as the close
code to answer with, after the data that preceded it), and wire bytes for what it
sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from websockify.protocol.codec import Buffer, Close, Codec, Data, Ping, Pong, Violation
from websockify.protocol.hybi import HybiCodec


@dataclass
class Received:
    """What one piece of client input decoded to, in wire order within each list.

    ``data`` is the payload bytes for the application (unmasked, base64-decoded).
    ``close`` is the peer's Close as (code or None, reason); ``violation`` is the
    close code and reason to answer a broken frame with.  After either, the codec
    ignores further input.
    """

    data: list[bytes] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close: tuple[int | None, str] | None = None
    violation: tuple[int, str] | None = None


class FrameStream:
    """One connection's codec, as the library layer uses it."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec

    @classmethod
    def rfc6455(cls, subprotocol: str | None, max_message_size: int) -> FrameStream:
        """An RFC 6455 server stream speaking ``subprotocol`` ("base64" decodes text frames)."""
        return cls(HybiCodec(subprotocol, max_message_size))

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol ("binary", "base64" or None)."""
        return self._codec.subprotocol

    @property
    def supports_ping(self) -> bool:
        """False for the Hixie drafts, which have no ping frame."""
        return self._codec.supports_ping

    def feed(self, data: Buffer) -> Received:
        """Decode client bytes; never raises for the peer's mistakes."""
        received = Received()
        for event in self._codec.receive(data):
            if isinstance(event, Data):
                received.data.append(bytes(event.payload))
            elif isinstance(event, Ping):
                received.pings.append(event.payload)
            elif isinstance(event, Pong):
                received.pongs.append(event.payload)
            elif isinstance(event, Close):
                received.close = (event.code, event.reason)
            elif isinstance(event, Violation):  # always the last event
                received.violation = (event.close_code, event.reason)
        return received

    def encode_data(self, payload: Buffer) -> bytes:
        """One data message (binary, or base64 text where the client asked for it)."""
        return b"".join(self._codec.encode_data(payload))

    def encode_ping(self, payload: bytes = b"") -> bytes:
        return self._codec.encode_ping(payload)

    def encode_pong(self, payload: bytes) -> bytes:
        return self._codec.encode_pong(payload)

    def encode_close(self, code: int = 1000, reason: str = "") -> bytes:
        return self._codec.encode_close(code, reason)
