"""The client of an upgraded connection, as the handler hands it to the application.

Shared by the handler (which builds it after our handshake), the application
(which builds it from gevent-websocket's connection under gunicorn) and the relay
(which serves it), so none of them imports another for it.
"""

from __future__ import annotations

from typing import Any

from gevent import socket

from websockify import stdlib_http
from websockify.protocol.codec import Codec


class ClientConnection:
    """A client socket after the handshake: what ``environ['wsgi.websocket']`` holds.

    ``leftover`` are bytes the client sent right after its handshake that the HTTP
    reader had already buffered; the relay parses them before reading the socket.
    """

    __slots__ = ("codec", "leftover", "peer", "sock", "version")

    def __init__(
        self, sock: socket.socket, codec: Codec, leftover: bytes, peer: str, version: str
    ) -> None:
        self.sock = sock
        self.codec = codec
        self.leftover = leftover
        self.peer = peer
        self.version = version


def take_buffered_input(rfile: Any, sock: Any) -> bytes:
    """Bytes the HTTP reader already buffered past the handshake, without blocking.

    A client may send its first frames together with the handshake; they sit in
    ``rfile``'s buffer, not in the socket, and would be lost to the relay.  The
    reader is closed and the socket left blocking, as the code after a handshake
    expects: from here on the relay reads the socket itself.
    """
    data = stdlib_http.take_buffered_input(rfile, sock)
    sock.settimeout(None)
    rfile.close()
    return data


def peer_name(address: Any) -> str:
    """host:port of a client address ([v6]:port; "unix" for a unix-socket peer)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) or "unix"
