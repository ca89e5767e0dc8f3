"""The legacy drafts draft-hixie-thewebsocketprotocol-76 and -75: handshake and codec.

Old browsers (Safari 5, Chrome 4 to 13, iOS 4 and 5) speak these drafts.
They share the listener and path of RFC 6455; :mod:`websockify.protocol.handshake`
sends here every upgrade request without ``Sec-WebSocket-Version``/``Sec-WebSocket-Key``.

Both drafts frame text only, ``0x00 <UTF-8> 0xFF``, so binary data travels as base64
in both directions whatever subprotocol the client names.  ``0xFF 0x00`` closes.
Pings, close codes and binary frames do not exist in these drafts.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import struct
from typing import TYPE_CHECKING

from websockify.errors import FrameError, HandshakeError
from websockify.protocol.base64stream import Base64Decoder
from websockify.protocol.codec import Buffer, Close, Codec, Data, Event, Violation
from websockify.protocol.handshake_types import HandshakeOptions, Upgrade, UpgradeRequest

if TYPE_CHECKING:
    from collections.abc import Mapping

#: A text frame is 0x00 <text> 0xFF; the close frame is 0xFF 0x00.
TEXT_TYPE = 0x00
CLOSE_TYPE = 0xFF
TEXT_START = b"\x00"
TEXT_END = b"\xff"
CLOSE_FRAME = b"\xff\x00"

#: Key numbers are 32-bit: a client picks them at most 4,294,967,295 (draft-76 §4.1).
MAX_KEY_NUMBER = 0xFFFFFFFF
_NOT_DIGITS = re.compile(r"[^0-9]+")
#: Values we echo into response headers: printable ASCII only, so nothing can inject a line.
_ECHOABLE = re.compile(r"[\x20-\x7e]*")


def accept(request: UpgradeRequest, body: bytes, options: HandshakeOptions) -> Upgrade:
    """Answer a Hixie upgrade: draft-76 when both keys are present, draft-75 when none is.

    ``body`` is what followed the headers: the 8-byte challenge of draft-76, empty for
    draft-75.  Raises :class:`HandshakeError` (400) with a reason the client may read.
    """
    headers = request.headers
    host = _echoable(headers, "host")
    if not host:
        raise HandshakeError("Hixie WebSocket upgrade needs a Host header (for the Location)")
    location = f"{'wss' if request.secure else 'ws'}://{host}{_echo(request.path, 'path')}"
    origin = _echoable(headers, "origin")
    codec = HixieCodec(options.max_message_size)

    has_key1 = "sec-websocket-key1" in headers
    has_key2 = "sec-websocket-key2" in headers
    if has_key1 or has_key2:
        if not (has_key1 and has_key2):
            raise HandshakeError("Hixie-76 needs both Sec-WebSocket-Key1 and Sec-WebSocket-Key2")
        answer = challenge_response(
            headers["sec-websocket-key1"], headers["sec-websocket-key2"], body
        )
        fields = _response_fields("Sec-WebSocket-", origin, location,
                                  _echoable(headers, "sec-websocket-protocol"))
        response = _response("HTTP/1.1 101 WebSocket Protocol Handshake", fields) + answer
        return Upgrade(response=response, codec=codec, version="hixie-76")

    if not origin:
        # Draft-75's response must echo the Origin (WebSocket-Origin), so a request
        # without one is not draft-75: most likely an RFC 6455 client that lost its
        # Sec-WebSocket-Key and Sec-WebSocket-Version.
        raise HandshakeError("Hixie-75 WebSocket upgrade needs an Origin header "
                             "(RFC 6455 needs Sec-WebSocket-Key and Sec-WebSocket-Version)")
    fields = _response_fields("WebSocket-", origin, location,
                              _echoable(headers, "websocket-protocol"))
    response = _response("HTTP/1.1 101 Web Socket Protocol Handshake", fields)
    return Upgrade(response=response, codec=codec, version="hixie-75")


def challenge_response(key1: str, key2: str, body: bytes) -> bytes:
    """The 16-byte answer of draft-76: MD5 of both key numbers (big-endian) and the body."""
    if len(body) != 8:
        raise HandshakeError(
            f"Hixie-76 handshake needs 8 bytes after the headers, got {len(body)}"
        )
    part1 = _key_part(key1, "Sec-WebSocket-Key1")
    part2 = _key_part(key2, "Sec-WebSocket-Key2")
    return hashlib.md5(struct.pack(">II", part1, part2) + body).digest()


def _key_part(key: str, name: str) -> int:
    """The digits of ``key`` as a number, divided by the number of spaces in it."""
    digits = _NOT_DIGITS.sub("", key)
    if not digits:
        raise HandshakeError(f"{name} has no digits")
    # Length first: int() of a 5,000-digit key would be a slow bignum parse (or a ValueError).
    significant = digits.lstrip("0") or "0"
    if len(significant) > 10 or int(significant) > MAX_KEY_NUMBER:
        raise HandshakeError(f"{name} is a number over 32 bits")
    spaces = key.count(" ")
    if spaces == 0:
        raise HandshakeError(f"{name} has no spaces")
    number = int(significant)
    if number % spaces:
        raise HandshakeError(f"{name}: its number is not a multiple of its {spaces} spaces")
    return number // spaces


def _echo(value: str, what: str) -> str:
    if not _ECHOABLE.fullmatch(value):
        raise HandshakeError(f"Hixie WebSocket upgrade: {what} is not printable ASCII")
    return value


def _echoable(headers: Mapping[str, str], name: str) -> str:
    """A request header we will echo, or "" when absent."""
    return _echo(headers.get(name, ""), name)


def _response_fields(prefix: str, origin: str, location: str,
                     protocol: str) -> list[tuple[str, str]]:
    """Origin, Location and (when offered) Protocol, under the draft's own header names.

    The client checks that the protocol comes back exactly as it sent it, so it is
    echoed verbatim even when it names "binary": payloads are base64 regardless.
    """
    fields = [("Upgrade", "WebSocket"), ("Connection", "Upgrade")]
    if origin:
        fields.append((prefix + "Origin", origin))
    fields.append((prefix + "Location", location))
    if protocol:
        fields.append((prefix + "Protocol", protocol))
    return fields


def _response(status_line: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [status_line, *(f"{name}: {value}" for name, value in fields), "", ""]
    return "\r\n".join(lines).encode("ascii")


class HixieCodec(Codec):
    """``0x00 <base64> 0xFF`` frames in both directions; ``0xFF 0x00`` closes.

    Incoming frames are decoded as they stream in: a frame split over many reads is
    never buffered whole, only the last partial base64 group is, and a frame longer
    than ``max_message_size`` is refused as soon as it grows past it.  The scan for
    the end of a frame is one ``bytes.find`` per frame, so large reads cost C speed.

    The outcome does not depend on how TCP cut the input: a frame's text is decoded
    up to the size limit before the limit is enforced, so an oversized frame ends
    with 1009 unless a violation inside its first ``max_message_size`` bytes came
    first (1007), in one read or in many.
    """

    #: The drafts carry text only, so every payload is base64 both ways.
    subprotocol: str | None = "base64"
    supports_ping = False

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._decoder = Base64Decoder()
        #: Inside a text frame: its 0x00 was seen, its 0xFF not yet.
        self._in_frame = False
        #: Text bytes of the current frame so far (for the size limit).
        self._frame_length = 0
        #: A 0xFF type byte was seen at the end of the last input: 0x00 must follow.
        self._closing = False
        self._closed = False
        self.frames_received = 0

    def receive(self, data: Buffer) -> list[Event]:
        if self._closed:
            return []
        chunk = bytes(data) if isinstance(data, memoryview) else data
        decoded: list[bytes] = []
        events: list[Event] = []
        try:
            self._parse(chunk, decoded, events)
        except FrameError as error:
            self._closed = True
            _flush(decoded, events)
            events.append(Violation(error.reason, error.close_code))
            return events
        _flush(decoded, events)
        return events

    def _parse(self, chunk: bytes | bytearray, decoded: list[bytes],
               events: list[Event]) -> None:
        """Decode ``chunk`` into ``decoded`` (payloads) and ``events`` (a Close)."""
        view = memoryview(chunk)
        pos, size = 0, len(chunk)
        while pos < size:
            if self._in_frame:
                end = chunk.find(TEXT_END, pos)
                stop = size if end < 0 else end
                room = self.max_message_size - self._frame_length
                too_long = stop - pos > room
                if too_long:
                    # Decode what fits first, as a read that ended at the limit would.
                    stop, end = pos + room, -1
                self._frame_length += stop - pos
                text = view[pos:stop]
                try:
                    payload = self._decoder.feed(text)
                    if end >= 0:
                        self._decoder.end_message()
                except FrameError as error:
                    raise _explain(error, text) from None
                if payload:
                    decoded.append(payload)
                if too_long:
                    raise FrameError(
                        f"Hixie frame longer than the maximum message size "
                        f"({self.max_message_size} bytes)", 1009)
                if end < 0:
                    return
                self._in_frame = False
                pos = end + 1
            elif self._closing:
                if chunk[pos] != 0:
                    raise FrameError(f"Hixie frame type 0xff with length byte "
                                     f"0x{chunk[pos]:02x}: only 0xff 0x00 (close) is allowed")
                _flush(decoded, events)
                events.append(Close(code=None))
                self._closed = True
                return
            else:
                kind = chunk[pos]
                if kind == TEXT_TYPE:
                    self.frames_received += 1
                    self._in_frame = True
                    self._frame_length = 0
                elif kind == CLOSE_TYPE:
                    self.frames_received += 1
                    self._closing = True
                else:
                    raise FrameError(f"Hixie frame type 0x{kind:02x} is not 0x00 or 0xff")
                pos += 1

    def encode_data(self, payload: Buffer) -> list[Buffer]:
        # One joined piece: measured as fast as three pieces for large payloads and
        # twice as fast for small ones, where each extra send is a system call.
        return [b"".join((TEXT_START, binascii.b2a_base64(payload, newline=False), TEXT_END))]

    def encode_ping(self, payload: bytes = b"") -> bytes:
        raise RuntimeError("Hixie drafts have no ping frame (supports_ping is False)")

    def encode_pong(self, payload: bytes) -> bytes:
        raise RuntimeError("Hixie drafts have no pong frame: receive() never yields a Ping")

    def encode_close(self, code: int = 1000, reason: str = "") -> bytes:
        # The drafts' close frame carries no code or reason; those only reach the log.
        return CLOSE_FRAME


def _explain(error: FrameError, text: memoryview) -> FrameError:
    """Name bad UTF-8 as such: the base64 decoder only sees characters outside its alphabet.

    Only ``text``, this read's part of the frame, is checked, so a multi-byte character
    split between two reads may be called bad UTF-8; the close code is 1007 either way.
    """
    try:
        str(text, "utf-8")
    except UnicodeDecodeError:
        return FrameError("Hixie frame is not valid UTF-8", error.close_code)
    return error


def _flush(decoded: list[bytes], events: list[Event]) -> None:
    """Move the payloads decoded so far into ``events`` as one Data.

    Frames decoded from one read are joined into one Data, so a burst of small frames
    costs the target one send rather than one per frame.
    """
    if decoded:
        events.append(Data(decoded[0] if len(decoded) == 1 else b"".join(decoded)))
        decoded.clear()
