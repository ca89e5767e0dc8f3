"""Incremental, strict base64 decoding of one message at a time.

Clients of the "base64" subprotocol (and of the Hixie drafts) send target bytes as
base64 text.  A message can arrive in many frames and reads, and the codecs never
hold a whole message, so this decoder turns each complete 4-character group into
bytes as soon as it is there and keeps the rest (at most 3 characters) for later.

Strict means: only the standard alphabet, no white space, and "=" padding only in
the last group of a message.  Anything else is the peer's fault: close code 1007.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from websockify.errors import FrameError

if TYPE_CHECKING:
    from websockify.protocol.codec import Buffer

#: Close code for a payload that is not what the subprotocol promises.
INVALID_PAYLOAD = 1007
_PAD = ord("=")


def _decode_groups(groups: Buffer) -> bytes:
    """Decode whole 4-character groups, strictly.

    ``b64decode(validate=True)`` is strict on 3.11+ (it passes ``strict_mode``);
    on 3.10 it checks ``[A-Za-z0-9+/]*={0,2}`` first, which for whole groups
    rejects exactly what strict mode rejects.  So one call serves every version.
    """
    try:
        return base64.b64decode(groups, validate=True)
    except binascii.Error:
        raise FrameError("invalid base64 in a text message", INVALID_PAYLOAD) from None


class Base64Decoder:
    """Decodes the base64 text of one message after another, piece by piece."""

    def __init__(self) -> None:
        self._rest = b""  # 0-3 characters of an unfinished group
        self._padded = False  # the last group had "=": the message must end here

    def feed(self, chunk: Buffer) -> bytes:
        """Decode what ``chunk`` completes; raises FrameError(1007) on invalid base64."""
        if not chunk:
            return b""
        if self._padded:
            raise FrameError("base64 data after padding", INVALID_PAYLOAD)
        data = self._rest + chunk if self._rest else chunk
        whole = len(data) & ~3
        self._rest = bytes(data[whole:])
        if not whole:
            return b""
        decoded = _decode_groups(data[:whole])
        self._padded = data[whole - 1] == _PAD
        if self._padded and self._rest:
            # Checked now, not when the rest makes a group: the same bytes must fail
            # the same way however the reads cut them.
            raise FrameError("base64 data after padding", INVALID_PAYLOAD)
        return decoded

    def end_message(self) -> None:
        """The message is complete; raises FrameError(1007) if a group is unfinished."""
        rest = self._rest
        self._rest = b""
        self._padded = False
        if rest:
            raise FrameError("base64 message ends inside a 4-character group", INVALID_PAYLOAD)
