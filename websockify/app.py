"""The WSGI application: WebSocket upgrades go to the relay, other requests to --web.

The same object serves under websockify's own server and, later, under any
gevent-websocket capable WSGI server: it only looks at ``environ``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from gevent import socket

from websockify.errors import TargetError
from websockify.relay import ClientConnection, Relay, refuse

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: Opens the target for one request (its environ: a token plugin will read the path).
ConnectTarget = Callable[[dict[str, Any]], socket.socket]

_NOT_ALLOWED = b"405 Method Not Allowed: this server only relays WebSocket connections\n"


class WebsockifyApp:
    """Routes each request; keeps the set of running relays for shutdown and counting."""

    def __init__(
        self,
        connect_target: ConnectTarget,
        *,
        heartbeat: float = 0.0,
        static: WSGIApp | None = None,
        on_relay_end: Callable[[], None] | None = None,
    ) -> None:
        self._connect_target = connect_target
        self._heartbeat = heartbeat
        self._static = static
        self._on_relay_end = on_relay_end
        self.relays: set[Relay] = set()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        client = environ.get("wsgi.websocket")
        if isinstance(client, ClientConnection):
            self._serve_websocket(client, environ)
            return []
        if self._static is not None:
            return self._static(environ, start_response)
        start_response("405 Method Not Allowed", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(_NOT_ALLOWED))),
            ("Allow", "GET (WebSocket upgrade only)"),
        ])
        return [_NOT_ALLOWED]

    def _serve_websocket(self, client: ClientConnection, environ: dict[str, Any]) -> None:
        try:
            try:
                target = self._connect_target(environ)
            except TargetError as error:
                logger.warning("%s: %s", client.peer, error)
                refuse(client, 1011, str(error))
                return
            logger.info("%s: connected to target %s", client.peer, _describe(target))
            relay = Relay(client, target, self._heartbeat)
            self.relays.add(relay)
            try:
                relay.run()
            finally:
                self.relays.discard(relay)
        finally:
            if self._on_relay_end is not None:
                self._on_relay_end()

    def close_all(self, code: int, reason: str) -> None:
        """Start the closing handshake of every running relay (returns at once)."""
        for relay in list(self.relays):
            relay.close(code, reason)


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{name}"
