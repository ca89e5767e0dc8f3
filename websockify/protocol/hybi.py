"""The server side of RFC 6455 framing (also HyBi drafts 7 and 8), sans I/O.

This is the relay's hot path: every uploaded byte goes through :meth:`HybiCodec.receive`.
So the parser streams.  A data frame's payload is unmasked and handed on as soon as
its bytes arrive, whatever the frame's size; between calls it keeps only an
unfinished frame header (at most 14 bytes) and the payload of a control frame (at
most 125).  Headers are read with ``struct.unpack_from`` and payloads are sliced
from a memoryview, so the cost per call is a handful of Python operations plus
one XOR pass (:mod:`websockify.protocol.masking`).

Each violation maps to one close code (RFC 6455 section 7.4.1): 1002 for broken
framing, 1007 for a payload that is not what it claims to be (UTF-8, base64, a
close reason), 1009 for a message over the size limit.
"""

from __future__ import annotations

import binascii
import codecs
import struct
from collections.abc import Callable

from websockify.errors import FrameError
from websockify.protocol.base64stream import INVALID_PAYLOAD, Base64Decoder
from websockify.protocol.codec import Buffer, Close, Codec, Data, Event, Ping, Pong, Violation
from websockify.protocol.masking import unmask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

MESSAGE_TOO_BIG = 1009

#: The most a control frame may carry (RFC 6455 section 5.5).
MAX_CONTROL_PAYLOAD = 125
#: 2 bytes, an 8-byte extended length and a 4-byte mask.
MAX_HEADER = 14
#: Outgoing payloads shorter than this are copied behind their header.  The relay
#: writes pieces with sendmsg; on loopback TCP (CPython 3.11) ``send(header + payload)``
#: beat ``sendmsg([header, payload])`` by 0.3-0.6 µs up to 4 KiB (1.8 vs 2.2 µs at
#: 1 KiB) and was no better beyond, where the copy is only extra memory traffic.
JOIN_THRESHOLD = 4096

_UINT16 = struct.Struct("!H")
_UINT64 = struct.Struct("!Q")
_HEADER_7 = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

#: Receives the unmasked pieces of one frame's payload, appending events.
Sink = Callable[[Buffer, list[Event]], None]


def valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 section 7.4); 1004-1006 and 1015 are reserved."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked final frame (server frames are never masked)."""
    first = 0x80 | opcode
    if length < 126:
        return _HEADER_7.pack(first, length)
    if length < 0x10000:
        return _HEADER_16.pack(first, 126, length)
    return _HEADER_64.pack(first, 127, length)


class HybiCodec(Codec):
    """One RFC 6455 connection, server side.

    ``receive`` contract: the returned payloads never share memory with ``data``
    (unmasking writes every byte to a new buffer, and header or control bytes
    kept between calls are copied), so the caller may pass any bytes-like object,
    even a buffer it reuses for the next read.

    After a Close or a Violation event, further input is ignored.

    Text frames are relayed too: in "binary" mode (or with no subprotocol) as
    their bytes, after checking that each message is UTF-8; in "base64" mode their
    base64 is decoded.  A broken message fails with 1007 once the bad bytes are
    seen; the pieces of it that came before have already been handed on, as
    streaming requires.
    """

    supports_ping = True

    def __init__(self, subprotocol: str | None, max_message_size: int) -> None:
        self.subprotocol = subprotocol
        self._max_message_size = max_message_size
        self._base64 = subprotocol == "base64"
        self._closed = False
        self.frames_received = 0
        #: The start of a header that has not fully arrived.
        self._partial_header = b""
        # The frame being read: its payload goes to _sink, unmasked.
        self._in_frame = False
        self._opcode = OP_CONTINUATION
        self._fin = False
        self._remaining = 0
        self._mask = b""
        self._mask_offset = 0
        self._sink: Sink = self._relay
        # The data message being read (fragments included).
        self._in_message = False
        self._message_sink: Sink = self._relay
        #: Checks a text message once it is complete (None for binary messages).
        self._message_end: Callable[[], None] | None = None
        self._message_size = 0
        self._utf8 = _Utf8Decoder()
        self._base64_decoder = Base64Decoder()
        self._control = bytearray()

    # -- receiving -----------------------------------------------------------------

    def receive(self, data: Buffer) -> list[Event]:
        """Parse client bytes; see the class docstring for what may be passed."""
        events: list[Event] = []
        if self._closed:
            return events
        try:
            self._parse(memoryview(data).cast("B"), events)
        except FrameError as error:
            self._closed = True
            events.append(Violation(error.reason, error.close_code))
        return events

    def _parse(self, view: memoryview, events: list[Event]) -> None:
        pos = 0
        end = len(view)
        while True:
            if not self._in_frame:
                if pos == end:
                    return
                pos = self._read_header(view, pos, end)
                if not self._in_frame:
                    return
            remaining = self._remaining
            if remaining:
                if pos == end:
                    return
                stop = min(pos + remaining, end)
                piece = view[pos:stop]
                self._sink(unmask(piece, self._mask, self._mask_offset), events)
                taken = stop - pos
                self._mask_offset = (self._mask_offset + taken) & 3
                self._remaining = remaining - taken
                pos = stop
                if remaining > taken:
                    return
            self._in_frame = False
            self._end_frame(events)
            if self._closed:
                return

    def _read_header(self, view: memoryview, pos: int, end: int) -> int:
        """Start a frame if its header is complete; returns the position after what it used."""
        partial = self._partial_header
        if not partial:
            size = self._start_frame(view, pos, end)
            if not size:
                self._partial_header = bytes(view[pos:end])
                return end
            return pos + size
        buffered = partial + view[pos : pos + MAX_HEADER - len(partial)]
        size = self._start_frame(buffered, 0, len(buffered))
        if not size:
            # Shorter than MAX_HEADER, so it holds all that was left of ``view``.
            self._partial_header = buffered
            return end
        self._partial_header = b""
        return pos + size - len(partial)

    def _start_frame(self, buf: Buffer, pos: int, end: int) -> int:
        """Check the header at ``buf[pos:end]``; returns its size, or 0 if it is incomplete.

        The first two bytes decide every 1002 but one, so those are raised as soon as
        they arrive; the frame's state is only set once the whole header is there.
        """
        if end - pos < 2:
            return 0
        first, second = _HEADER_7.unpack_from(buf, pos)
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        length = second & 0x7F
        if first & 0x70:
            raise FrameError("reserved bits set without a negotiated extension")
        if not second & 0x80:
            raise FrameError("client frames must be masked")
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise FrameError("fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError("control frame payload over 125 bytes")
        elif opcode not in _DATA_OPCODES:
            raise FrameError(f"unknown opcode {opcode:#x}")
        elif opcode == OP_CONTINUATION and not self._in_message:
            raise FrameError("continuation frame without a message to continue")
        elif opcode != OP_CONTINUATION and self._in_message:
            raise FrameError("new data frame while a fragmented message is unfinished")

        if length == 126:
            size = 8
            if end - pos < size:
                return 0
            (length,) = _UINT16.unpack_from(buf, pos + 2)
        elif length == 127:
            size = 14
            if end - pos < size:
                return 0
            (length,) = _UINT64.unpack_from(buf, pos + 2)
            if length >> 63:
                raise FrameError("64-bit payload length with the top bit set")
        else:
            size = 6
            if end - pos < size:
                return 0

        self.frames_received += 1
        if opcode in _CONTROL_OPCODES:
            self._control.clear()
            self._sink = self._keep_control
        else:
            if opcode != OP_CONTINUATION:
                self._start_message(opcode)
            self._message_size += length
            if self._message_size > self._max_message_size:
                raise FrameError(
                    f"message over the limit of {self._max_message_size} bytes", MESSAGE_TOO_BIG
                )
            self._sink = self._message_sink
        self._in_frame = True
        self._opcode = opcode
        self._fin = fin
        self._remaining = length
        self._mask = bytes(buf[pos + size - 4 : pos + size])
        self._mask_offset = 0
        return size

    def _start_message(self, opcode: int) -> None:
        self._in_message = True
        self._message_size = 0
        if opcode == OP_BINARY:
            self._message_sink = self._relay
            self._message_end = None
        elif self._base64:
            self._message_sink = self._decode_base64
            self._message_end = self._base64_decoder.end_message
        else:
            self._utf8.reset()
            self._message_sink = self._check_utf8
            self._message_end = self._end_utf8

    def _end_frame(self, events: list[Event]) -> None:
        opcode = self._opcode
        if opcode in _CONTROL_OPCODES:
            self._end_control(opcode, bytes(self._control), events)
        elif self._fin:
            self._in_message = False
            if self._message_end is not None:
                self._message_end()

    def _end_control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == OP_PING:
            events.append(Ping(payload))
        elif opcode == OP_PONG:
            events.append(Pong(payload))
        else:
            events.append(_parse_close(payload))
            self._closed = True

    # -- sinks: where the unmasked pieces of a payload go ----------------------------

    def _relay(self, chunk: Buffer, events: list[Event]) -> None:
        events.append(Data(chunk))

    def _check_utf8(self, chunk: Buffer, events: list[Event]) -> None:
        self._decode_utf8(chunk, final=False)
        events.append(Data(chunk))

    def _end_utf8(self) -> None:
        self._decode_utf8(b"", final=True)

    def _decode_utf8(self, chunk: Buffer, final: bool) -> None:
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            raise FrameError("text message is not UTF-8", INVALID_PAYLOAD) from None

    def _decode_base64(self, chunk: Buffer, events: list[Event]) -> None:
        decoded = self._base64_decoder.feed(chunk)
        if decoded:
            events.append(Data(decoded))

    def _keep_control(self, chunk: Buffer, events: list[Event]) -> None:
        self._control += chunk

    # -- sending -------------------------------------------------------------------

    def encode_data(self, payload: Buffer) -> list[Buffer]:
        """One final frame: binary, or text of base64 in "base64" mode.

        Below JOIN_THRESHOLD header and payload come as one piece (copying a small
        payload is cheaper than a second iovec); above it the payload is not copied.
        """
        if self._base64:
            payload = binascii.b2a_base64(payload, newline=False)
            header = frame_header(OP_TEXT, len(payload))
        else:
            header = frame_header(OP_BINARY, len(payload))
        if len(payload) < JOIN_THRESHOLD:
            return [header + payload]
        return [header, payload]

    def encode_ping(self, payload: bytes = b"") -> bytes:
        return _control_frame(OP_PING, payload)

    def encode_pong(self, payload: bytes) -> bytes:
        return _control_frame(OP_PONG, payload)

    def encode_close(self, code: int = 1000, reason: str = "") -> bytes:
        """A close frame; the reason is cut to fit 125 bytes, never inside a character."""
        room = MAX_CONTROL_PAYLOAD - _UINT16.size
        encoded = reason.encode("utf-8")[:room].decode("utf-8", "ignore").encode("utf-8")
        return _control_frame(OP_CLOSE, _UINT16.pack(code) + encoded)


def _control_frame(opcode: int, payload: bytes) -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"control frame payload of {len(payload)} bytes (at most 125)")
    return frame_header(opcode, len(payload)) + payload


def _parse_close(payload: bytes) -> Close:
    """The Close event for a close frame's payload (RFC 6455 section 5.5.1)."""
    if not payload:
        return Close(None)
    if len(payload) == 1:
        raise FrameError("close frame payload of 1 byte")
    (code,) = _UINT16.unpack_from(payload)
    if not valid_close_code(code):
        raise FrameError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("close reason is not UTF-8", INVALID_PAYLOAD) from None
    return Close(code, reason)
