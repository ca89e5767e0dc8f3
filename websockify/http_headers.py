"""An HTTP request's header block, read into the message object gevent expects.

gevent reads headers with ``http.client.parse_headers``, which hands them to the
email package's feed parser: about 19 µs for a browser's upgrade request, one of
the largest Python costs of setting up a connection.  An ordinary block (one
``Name: value`` per line) is read here in about 7 µs, into the same message
object holding the same (name, value) pairs.  Anything unusual (a folded
line, a line without a colon or with a stray CR, too many or too long lines, the
end of the stream before the blank line) goes, with the lines already read, to
gevent's own parser: odd input gets exactly the outcome, limits and defects it
always had.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from gevent.pywsgi import OldMessage, headers_factory

#: http.client's limits on one header line and on the number of lines.
MAX_LINE = 65536
MAX_HEADERS = 100
#: Bounds of the table of header strings shared between requests.
SHARED_MAX_ENTRIES = 1024
SHARED_MAX_LENGTH = 128
_SHARED: dict[bytes, str] = {}
#: Headers whose value differs in every request: never worth a table entry.
_UNIQUE = frozenset({b"sec-websocket-key", b"sec-websocket-key1", b"sec-websocket-key2"})
#: A header line as the email parser reads it (field name: printable ASCII other
#: than ":" and space; leading blanks of the value dropped, trailing ones kept).
_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*)\r?\n")


class _LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def read_headers(rfile: _LineReader) -> Any:
    """The header block at the front of ``rfile``, as gevent's ``MessageClass`` returns it."""
    lines: list[bytes] = []
    fields: list[tuple[str, str]] = []
    while len(lines) < MAX_HEADERS:
        line = rfile.readline(MAX_LINE + 1)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            message = OldMessage()
            for name, value in fields:
                message.set_raw(name, value)
            message.set_payload("")
            return message
        match = _HEADER_LINE.fullmatch(line)
        if match is None or len(line) > MAX_LINE:
            break
        raw_name, raw_value = match[1], match[2]
        fields.append((_shared(raw_name), raw_value.decode("latin-1")
                       if raw_name.lower() in _UNIQUE else _shared(raw_value)))
    return headers_factory(_Replay(lines, rfile))


def _shared(raw: bytes) -> str:
    """``raw`` decoded, as one string object shared by every request that sends it.

    The headers live as long as the connection: names and most values (Host,
    Upgrade, Origin, the version, the subprotocols) repeat from client to client,
    so thousands of connections hold one copy.  The table is bounded in entries
    and entry size, so odd input cannot grow it; beyond that, strings are fresh.
    """
    text = _SHARED.get(raw)
    if text is None:
        text = raw.decode("latin-1")
        if len(raw) <= SHARED_MAX_LENGTH and len(_SHARED) < SHARED_MAX_ENTRIES:
            _SHARED[raw] = text
    return text


class _Replay:
    """``rfile`` with some lines already read put back in front of it."""

    def __init__(self, lines: list[bytes], rfile: _LineReader) -> None:
        self._lines = lines[::-1]
        self._rfile = rfile

    def readline(self, size: int = -1, /) -> bytes:
        if self._lines:
            return self._lines.pop()
        return self._rfile.readline(size)
