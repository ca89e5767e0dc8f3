"""gevent's WSGI request handler, taught our WebSocket handshake.

gevent's pywsgi parses the HTTP request (with its limits on line length and
header count).  For an upgrade request we answer the handshake ourselves (RFC 6455
13/8/7 and the Hixie drafts; gevent-websocket knows only RFC 6455 and would
unmask every byte in Python), then hand the application a
:class:`~websockify.client.ClientConnection` in ``environ['wsgi.websocket']`` —
the key gevent-websocket made the convention — and let it run the relay.

Every other request goes to the application as plain WSGI.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Mapping
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler

from websockify import tls
from websockify.access import CLIENT_CN_KEY
from websockify.client import ClientConnection, peer_name, take_buffered_input
from websockify.errors import HandshakeError
from websockify.http_headers import read_headers
from websockify.protocol import handshake

logger = logging.getLogger(__name__)


class RequestTimeout(TimeoutError):
    """The client took longer than the handshake timeout to send its request.

    A socket timeout, so that gevent's request reader treats it as a dead client.
    """


class UpgradeHandler(WSGIHandler):
    """One client connection: HTTP requests, or one WebSocket upgrade then the relay."""

    _deadline: gevent.Timeout | None = None
    _app: Any = None

    def handle(self) -> None:
        # The application carries the handshake settings: the server may be ours or
        # gunicorn's.  Each read also gets the timeout, so a stalled send is bounded.
        self._app = self.server.application
        self.socket.settimeout(self._app.handshake_timeout)
        try:
            super().handle()
        except OSError as exc:
            # The client reset or vanished mid-request (gevent then fails to send
            # its 400): the peer's doing, worth a debug line, not a traceback.
            logger.debug("%s: connection lost during the request: %s",
                         peer_name(self.client_address), exc)
        finally:
            self._end_request_deadline()

    def read_requestline(self) -> str:
        # The request, from its first byte to its last header (and the Hixie-76 body),
        # must arrive within the handshake timeout: a client trickling one byte at a
        # time is dropped as surely as one that stalls.
        self._end_request_deadline()
        self._deadline = gevent.Timeout(
            self._app.handshake_timeout, RequestTimeout("request timed out"))
        self._deadline.start()
        line: str = super().read_requestline()
        return line

    def MessageClass(self, rfile: Any, *args: Any) -> Any:
        # gevent's hook (hence the name) that reads the header block: the same
        # message, read faster (see websockify.http_headers).
        return read_headers(rfile)

    def read_request(self, raw_requestline: str) -> bool:
        try:
            parsed = bool(super().read_request(raw_requestline))
        except http.client.HTTPException as exc:
            # e.g. "got more than 100 headers": the client's fault, answered 400
            # (gevent would print a traceback for anything but ValueError).
            raise ValueError(f"bad request headers: {exc}") from None
        except TimeoutError:
            raise ValueError("request headers timed out") from None
        if self.headers.defects:
            # e.g. a header line without a colon: the parser silently drops every
            # header after it, which could turn an upgrade into a plain GET.
            raise ValueError(f"malformed request headers: {self.headers.defects[0]!r}")
        return parsed

    def _handle_client_error(self, ex: BaseException) -> object:
        # gevent's hook for invalid requests.  A vanished client gets no answer (gevent
        # would print a traceback and then fail to send its 400); anything else is
        # answered 400 by gevent, which logs one line.
        if isinstance(ex, OSError):
            logger.debug("%s: connection lost during the request: %s",
                         peer_name(self.client_address), ex)
            return None
        return super()._handle_client_error(ex)

    def _end_request_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        if tls.is_tls(self.socket):  # TLS is per connection: one port serves both
            environ["wsgi.url_scheme"] = "https"
            common_name = tls.peer_common_name(self.socket)
            if common_name is not None:
                environ[CLIENT_CN_KEY] = common_name
        return environ

    def run_application(self) -> None:
        headers = _lower_case_headers(self.headers)
        if not handshake.is_upgrade(headers):
            self._end_request_deadline()
            super().run_application()
            return
        self.close_connection = True
        try:
            connection = self._upgrade(headers)
        finally:
            self._end_request_deadline()
        if connection is None:
            return
        del headers  # the relay runs inside the call below, for the connection's life
        self.environ["wsgi.websocket"] = connection
        self.environ["wsgi.websocket_version"] = connection.version
        # Through the bound __call__: Python (3.11+) then runs an application object
        # in the same C eval loop instead of a nested one, and the C stack that every
        # idle connection's greenlet keeps saved shrinks by about 0.8 KiB (measured).
        result = self.application.__call__(self.environ, _no_response)
        close = getattr(result, "close", None)
        if close is not None:
            close()

    def _upgrade(self, headers: Mapping[str, str]) -> ClientConnection | None:
        """Answer the handshake; returns the connection, or None once refused."""
        request = handshake.UpgradeRequest(
            method=self.command,
            path=self.path,
            headers=headers,
            secure=self.environ.get("wsgi.url_scheme") == "https",
        )
        peer = peer_name(self.client_address)
        try:
            body = self._read_body(handshake.body_length(request))
            upgrade = handshake.accept(request, body, self._app.handshake_options)
            admit = getattr(self.application, "admit", None)
            if admit is not None:
                admit(self.environ)  # origin, token and auth: refused before the 101
        except HandshakeError as error:
            logger.info("%s: handshake refused (%d): %s", peer, error.status, error.reason)
            self._set_logged_status(f"{error.status} Refused", 0)
            self.socket.sendall(handshake.error_response(error))
            return None
        self.socket.sendall(upgrade.response)
        self._set_logged_status("101 Switching Protocols", len(upgrade.response))
        leftover = take_buffered_input(self.rfile, self.socket) + tls.prepare_for_relay(self.socket)
        # At INFO the application's "connected to target" line says this too: one
        # line per connection opened, as formatting and writing each costs.
        logger.debug("%s: WebSocket %s, subprotocol %s", peer, upgrade.version,
                     upgrade.codec.subprotocol or "none")
        return ClientConnection(self.socket, upgrade.codec, leftover, peer, upgrade.version)

    def _read_body(self, length: int) -> bytes:
        """The bytes after the headers that belong to the handshake (Hixie-76's 8)."""
        if not length:
            return b""
        try:
            body: bytes = self.rfile.read(length)
        except TimeoutError:
            raise HandshakeError(
                f"the {length}-byte handshake body did not arrive in time") from None
        return body

    def _set_logged_status(self, status: str, length: int) -> None:
        """Make gevent's access log show what we answered outside start_response."""
        self._orig_status = status
        self.status = status.encode("latin-1")
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_length = length


def _no_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    """start_response for an upgraded connection: the response was the handshake."""
    raise RuntimeError("the WebSocket handshake has already been answered")


def _lower_case_headers(message: Any) -> dict[str, str]:
    """Header names lower-cased; repeated headers joined with ", " (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    # raw_items: the values as read, without the email package's per-value check
    # for undecodable bytes (headers are decoded as latin-1, so there are none).
    for name, value in message.raw_items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
