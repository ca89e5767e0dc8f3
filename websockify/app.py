"""The WSGI application: WebSocket upgrades go to the relay, other requests to --web.

One object serves under websockify's own server and under gunicorn.  It only
looks at ``environ``: ``environ['wsgi.websocket']`` holds either our
:class:`~websockify.client.ClientConnection` (our handler answered the handshake)
or gevent-websocket's ``WebSocket`` (its handler did), which is adopted here so
that the relay, not gevent-websocket, reads the frames.  It may be wrapped in WSGI
middleware: the handler takes its settings from the server, not from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from gevent import socket

from websockify import target, tls
from websockify.access import TARGET_KEY, Access
from websockify.client import ClientConnection, peer_name, take_buffered_input
from websockify.errors import HandshakeError, TargetError
from websockify.launcher import WrappedProgram
from websockify.protocol.hybi import HybiCodec
from websockify.relay import Relay, refuse
from websockify.settings import Settings
from websockify.static import StaticFiles

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: Opens the target for one request (its environ: a token plugin will read the path).
ConnectTarget = Callable[[dict[str, Any]], socket.socket]

#: Set in the environ once :meth:`WebsockifyApp.admit` has passed the request.
ADMITTED_KEY = "websockify.admitted"

_NOT_ALLOWED = b"405 Method Not Allowed: this server only relays WebSocket connections\n"


class WebsockifyApp:
    """Routes each request; keeps the set of running relays for shutdown and counting."""

    def __init__(
        self,
        connect_target: ConnectTarget,
        settings: Settings,
        *,
        static: WSGIApp | None = None,
        access: Access | None = None,
    ) -> None:
        self._connect_target = connect_target
        self._access = access if access is not None and access.active else None
        self._heartbeat = settings.heartbeat
        self._static = static
        self._max_message_size = settings.limits.max_message_size
        self.relays: set[Relay] = set()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        websocket = environ.get("wsgi.websocket")
        if websocket is not None:
            if isinstance(websocket, ClientConnection):
                self._serve_admitted(websocket, environ)
            else:
                self._serve_gevent_websocket(websocket, environ)
            return []
        if self._static is not None:
            if self._access is not None:
                try:
                    self._access.admit_web(environ)
                except HandshakeError as error:
                    return _refusal(error, environ, start_response)
            return self._static(environ, start_response)
        start_response("405 Method Not Allowed", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(_NOT_ALLOWED))),
            ("Allow", "GET (WebSocket upgrade only)"),
        ])
        return [_NOT_ALLOWED]

    def app_protocol(self, path: str) -> str:
        """gevent-websocket's hook: the one subprotocol its own handshake may accept.

        Its handshake can pick only one name, blind to the client's list: binary,
        which every current client (noVNC included) offers or does without.
        """
        return "binary"

    def admit(self, environ: dict[str, Any]) -> None:
        """Origin, token and auth checks of an upgrade, before it is answered.

        Our handler calls this before sending 101; raises HandshakeError.  The
        target a token chose is left in ``environ`` for the connection.
        """
        if self._access is not None:
            self._access.admit(environ)
        environ[ADMITTED_KEY] = True

    def close_all(self, code: int, reason: str) -> None:
        """Start the closing handshake of every running relay (returns at once)."""
        for relay in list(self.relays):
            relay.close(code, reason)

    def _serve_gevent_websocket(self, websocket: Any, environ: dict[str, Any]) -> None:
        """Relay a connection whose RFC 6455 handshake gevent-websocket answered.

        Its socket and the bytes its reader buffered are taken over; gevent-websocket
        is told the connection is closed, so it writes nothing more on it.
        """
        handler = websocket.handler
        offered = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
        chosen = self.app_protocol(environ.get("PATH_INFO", ""))
        codec = HybiCodec(chosen if chosen in offered else None, self._max_message_size)
        client = ClientConnection(
            handler.socket, codec,
            take_buffered_input(handler.rfile, handler.socket)
            + tls.prepare_for_relay(handler.socket),
            peer_name(handler.client_address), str(environ.get("wsgi.websocket_version")),
        )
        try:
            self._serve_admitted(client, environ)
        finally:
            websocket.closed = True

    def _serve_admitted(self, client: ClientConnection, environ: dict[str, Any]) -> None:
        """Relay ``client`` once the origin, token and auth checks have passed.

        Our handler runs them before the 101 and marks the environ.  When it could
        not (gevent-websocket's handler, or middleware hiding :meth:`admit` from our
        handler) they run here, after the 101, and a refusal is Close 1008: the
        checks are never skipped.
        """
        if not environ.get(ADMITTED_KEY):
            try:
                self.admit(environ)
            except HandshakeError as error:
                logger.info("%s: refused (%d): %s", client.peer, error.status, error.reason)
                refuse(client, 1008, error.reason)
                return
        self._serve_websocket(client, environ)

    def _serve_websocket(self, client: ClientConnection, environ: dict[str, Any]) -> None:
        try:
            target_socket = self._connect_target(environ)
        except TargetError as error:
            logger.warning("%s: %s", client.peer, error)
            refuse(client, 1011, str(error))
            return
        _log_connected(client, target_socket)
        relay = Relay(client, target_socket, self._heartbeat)
        self.relays.add(relay)
        try:
            relay.run()
        finally:
            self.relays.discard(relay)


def create_app(settings: Settings, program: WrappedProgram | None = None) -> WebsockifyApp:
    """The application for ``settings``: its target (or ``program``) and --web files."""
    static = StaticFiles(settings.web, file_only=settings.file_only) if settings.web else None
    access = Access(settings.access, settings.target, settings.limits.connect_timeout)
    return WebsockifyApp(
        _target_opener(settings, program, settings.limits.connect_timeout), settings,
        static=static, access=access,
    )


def _target_opener(settings: Settings, program: WrappedProgram | None,
                   timeout: float) -> ConnectTarget:
    """How each connection reaches its target: its token's, a fixed one or the program."""
    fixed = settings.target
    context = tls.target_context(settings.target_tls) if settings.target_tls else None

    def connect(environ: dict[str, Any]) -> socket.socket:
        chosen = environ.get(TARGET_KEY, fixed)
        if chosen is not None:
            return target.connect(chosen, timeout, context)
        assert program is not None, "cli guarantees a target, a token plugin or a program"
        return target.connect(program.wait_for_target(timeout), timeout, context)

    return connect


def _refusal(error: HandshakeError, environ: dict[str, Any],
             start_response: StartResponse) -> list[bytes]:
    """A plain HTTP request refused by --web-auth: its status, headers and reason."""
    logger.info("%s: refused (%d): %s", environ.get("REMOTE_ADDR", "?"), error.status,
                error.reason)
    body = f"{error.reason}\n".encode()
    start_response(f"{error.status} {_phrase(error.status)}", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *error.headers,
    ])
    return [body]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"


def _log_connected(client: ClientConnection, target_socket: socket.socket) -> None:
    """The connection's opening line, logged from a frame of its own.

    Logging creates a frame object for the function that calls it, kept until
    that function returns: from here that is at once, not when the relay ends.
    """
    logger.info("%s: WebSocket %s (subprotocol %s) connected to target %s",
                client.peer, client.version, client.codec.subprotocol or "none",
                _describe(target_socket))


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return peer_name(name)
    return f"unix:{name}"
