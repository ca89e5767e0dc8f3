"""HTTP glue between a parsed request and the protocol core, shared by both servers.

The library server parses requests with :mod:`http.server`, the gevent server with
gevent's pywsgi; both hand the same message type here.  The handshake core
wants lower-case header maps, and the relay wants every client byte that the
handler's buffered reader took past the request head.  Standard library only:
this module is imported under eventlet's monkey-patching and with plain threads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class _HeaderSource(Protocol):
    def items(self) -> Iterable[tuple[str, str]]: ...


def lower_case_headers(headers: _HeaderSource) -> dict[str, str]:
    """Header names lower-cased; repeated headers joined with ", " (RFC 9110 5.3).

    Takes an ``email.message.Message`` (what ``http.server`` and gevent parse) or any
    mapping.  A message's ``raw_items`` are the values as read, without the email
    package's per-value check for undecodable bytes (headers are decoded as latin-1,
    so there are none): that check is a measurable part of a connection's setup.
    """
    raw_items = getattr(headers, "raw_items", None)
    pairs = raw_items() if raw_items is not None else headers.items()
    lowered: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        lowered[key] = f"{lowered[key]}, {value}" if key in lowered else str(value)
    return lowered


def take_buffered_input(rfile: Any, sock: Any) -> bytes:
    """The client bytes that ``rfile`` buffered past the request head, without blocking.

    A client may send its first frames in the same segment as its handshake; they
    are in the reader's buffer, not in the socket, and the relay reads the socket.
    The socket is non-blocking for the one read and gets its previous timeout back.
    An empty result means nothing was buffered (an end of stream shows up again at
    the relay's first read).
    """
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = rfile.read1(1 << 16) or b""
    except OSError:  # nothing buffered and nothing on the socket (TLS says so this way too)
        data = b""
    finally:
        sock.settimeout(timeout)
    return bytes(data)
