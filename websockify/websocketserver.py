"""Upstream's WebSocket support for any ``http.server`` request handler.

:class:`WebSocketRequestHandlerMixIn` in front of a standard-library handler turns
GET requests that ask for a WebSocket into calls of ``handle_upgrade()`` and then
``handle_websocket()``, with ``self.request`` replaced by the connection's
:class:`~websockify.websocket.WebSocket`; other requests reach ``do_GET`` as before.
The proxy's handler (:mod:`websockify.websockifyserver`) builds on it.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from websockify.errors import HandshakeError
from websockify.protocol import handshake
from websockify.stdlib_http import lower_case_headers, take_buffered_input
from websockify.websocket import WebSocket

__all__ = ["HttpWebSocket", "WebSocketRequestHandler", "WebSocketRequestHandlerMixIn",
           "WebSocketServer"]


class HttpWebSocket(WebSocket):
    """A WebSocket whose handshake answer goes through the HTTP request handler."""

    def __init__(self, request_handler: Any) -> None:
        super().__init__()
        self.request_handler = request_handler

    def send_response(self, code: int, message: str | None = None) -> None:
        self.request_handler.send_response(code, message)

    def send_header(self, keyword: str, value: Any) -> None:
        self.request_handler.send_header(keyword, value)

    def end_headers(self) -> None:
        self.request_handler.end_headers()


class WebSocketRequestHandlerMixIn:
    """Adds WebSocket upgrades to a ``BaseHTTPRequestHandler`` subclass (put it first).

    ``SocketClass`` is the class of the connection object; it is built with the
    handler as its only argument and must accept like :class:`HttpWebSocket`.
    """

    SocketClass: type[WebSocket] = HttpWebSocket

    # Provided by the BaseHTTPRequestHandler this class is mixed into.
    headers: Any
    request: Any
    rfile: Any
    close_connection: bool

    def is_websocket_request(self) -> bool:
        """True when the request asks for a WebSocket (any draft)."""
        return self.headers is not None and handshake.is_upgrade(lower_case_headers(self.headers))

    def do_GET(self) -> None:
        if self.is_websocket_request():
            self.handle_upgrade()
        else:
            super().do_GET()  # type: ignore[misc]

    def handle_upgrade(self) -> None:
        """Answer the upgrade with ``SocketClass`` (RFC 6455), then ``handle_websocket()``."""
        websocket = self.SocketClass(self)  # type: ignore[call-arg]
        try:
            websocket.accept(self.request, self.headers)
        except HandshakeError as error:
            self.send_error(error.status, error.reason)  # type: ignore[attr-defined]
            return
        websocket.attach_buffered(take_buffered_input(self.rfile, self.request))
        self.request = websocket
        self.close_connection = True  # nothing HTTP follows a WebSocket
        self.handle_websocket()

    def handle_websocket(self) -> None:
        """Serve the WebSocket in ``self.request``; return when done (override this)."""


class WebSocketRequestHandler(WebSocketRequestHandlerMixIn, BaseHTTPRequestHandler):
    """A ready-made handler: WebSockets plus whatever ``do_*`` methods a subclass adds."""


class WebSocketServer(HTTPServer):
    """The standard ``HTTPServer``, for symmetry with upstream's module."""
