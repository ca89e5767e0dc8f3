"""gevent's WSGI request handler, taught our WebSocket handshake.

gevent's pywsgi parses the HTTP request (with its limits on line length and
header count).  For an upgrade request we answer the handshake ourselves (RFC 6455
13/8/7 and the Hixie drafts; gevent-websocket knows only RFC 6455 and would
unmask every byte in Python), then hand the application a
:class:`~websockify.client.ClientConnection` in ``environ['wsgi.websocket']`` —
the key gevent-websocket made the convention — and let it run the relay.

Every other request goes to the application as plain WSGI, once its body (if
any) has been read and dropped: websockify's application reads no body, and the
whole request, body included, must arrive within the handshake timeout.

The handler takes its settings from the server it runs under (an
:class:`UpgradeServer`: websockify's own, or the gunicorn worker's), never from the
application, which WSGI middleware may wrap.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.pywsgi import Input, WSGIHandler

from websockify import tls
from websockify.access import CLIENT_CN_KEY
from websockify.client import ClientConnection, peer_name, take_buffered_input
from websockify.errors import HandshakeError
from websockify.http_headers import read_headers
from websockify.protocol import handshake
from websockify.settings import Limits, Settings
from websockify.stdlib_http import lower_case_headers

logger = logging.getLogger(__name__)

#: What this handler overrides or uses of gevent.pywsgi.WSGIHandler beyond the WSGI
#: API, in one place: gevent internals (the underscored ones private), with no
#: promise of stability.  Checked against gevent 22.10.2 and 26.9.0;
#: tests/test_handler_hooks.py fails when one of them disappears or when the handler
#: overrides a gevent method not named here.  GEVENT_MODULE_NAMES are the
#: gevent.pywsgi names used beyond the handler class, here and in http_headers.
GEVENT_HOOKS: dict[str, str] = {
    "handle": "per-connection set-up: socket timeout, settings from the server",
    "read_requestline": "starts the deadline of the whole request",
    "MessageClass": "reads the header block (websockify.http_headers, faster)",
    "get_environ": "https and the client certificate's CN for TLS connections",
    "read_request": "header parser errors and defects become 400",
    "_handle_client_error": "a vanished client gets no 400 and no traceback",
    "run_application": "the upgrade path; the body read within the deadline",
    "_sendall": "a response the client stops reading is one log line",
    "wsgi_input": "gevent's body reader (Input): read for plain requests, disarmed "
                  "after an upgrade",
    "rfile": "the buffered reader holding bytes sent with the handshake",
    "request_version": "the request line's HTTP version",
    "_orig_status": "the status gevent's access log prints (set for an upgrade)",
    "status": "the status line the access log falls back to (set for an upgrade)",
    "response_headers": "reset for an upgrade, whose response gevent did not write",
    "response_length": "the byte count the access log prints (set for an upgrade)",
}
GEVENT_MODULE_NAMES: dict[str, str] = {
    "Input": "the body reader, built as Input(rfile, content_length)",
    "OldMessage": "the header message class gevent's handler expects",
    "headers_factory": "gevent's own header parser, for input out of the ordinary",
}


class RequestTimeout(TimeoutError):
    """The client took longer than the handshake timeout to send its request.

    A socket timeout, so that gevent's request reader treats it as a dead client.
    """


class ResponseStalled(Exception):
    """A write of a plain HTTP response did not complete within the handshake timeout."""


@dataclass(frozen=True, slots=True)
class UpgradeSettings:
    """What the handler needs to know: the request deadline and the handshake options.

    The defaults are :class:`~websockify.settings.Limits`'.
    """

    handshake_timeout: float = Limits().handshake_timeout
    handshake_options: handshake.HandshakeOptions = field(
        default_factory=handshake.HandshakeOptions)

    @classmethod
    def from_settings(cls, settings: Settings) -> UpgradeSettings:
        return cls(
            handshake_timeout=settings.limits.handshake_timeout,
            handshake_options=handshake.HandshakeOptions(
                max_message_size=settings.limits.max_message_size,
                allow_hixie=settings.allow_hixie,
            ),
        )


class UpgradeServer:
    """Mixed into a gevent WSGI server that runs :class:`UpgradeHandler`.

    It gives the handler its settings and decides, for each accepted handshake,
    whether one more WebSocket may open.  Under a server without it the handler
    uses the defaults and admits every WebSocket.
    """

    upgrade_settings: UpgradeSettings = UpgradeSettings()

    def admit_websocket(self, environ: dict[str, Any]) -> None:
        """Called just before the 101; raises HandshakeError to refuse the upgrade.

        ``environ`` is the request's (the application will see it): what an
        admission decides about the connection can be left there.
        """


_DEFAULT_SERVER = UpgradeServer()


class UpgradeHandler(WSGIHandler):
    """One client connection: HTTP requests, or one WebSocket upgrade then the relay."""

    _deadline: gevent.Timeout | None = None
    _server_side: UpgradeServer = _DEFAULT_SERVER

    def handle(self) -> None:
        if isinstance(self.server, UpgradeServer):
            self._server_side = self.server
        # Each read and send also gets the timeout, so a stalled send is bounded.
        self.socket.settimeout(self._settings.handshake_timeout)
        try:
            super().handle()
        except OSError as exc:
            # The client reset or vanished mid-request (gevent then fails to send
            # its 400): the peer's doing, worth a debug line, not a traceback.
            logger.debug("%s: connection lost during the request: %s",
                         peer_name(self.client_address), exc)
        finally:
            self._end_request_deadline()

    @property
    def _settings(self) -> UpgradeSettings:
        return self._server_side.upgrade_settings

    def read_requestline(self) -> str:
        # The request, from its first byte to the last of its body (or the Hixie-76
        # challenge), must arrive within the handshake timeout: a client trickling
        # one byte at a time is dropped as surely as one that stalls.
        self._end_request_deadline()
        self._deadline = gevent.Timeout(
            self._settings.handshake_timeout, RequestTimeout("request timed out"))
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
        headers = lower_case_headers(self.headers)
        if not handshake.is_upgrade(headers):
            self._run_plain_request()
            return
        self.close_connection = True
        # After an upgrade no request body is read: the socket belongs to the relay
        # (or is closed after a refusal), and gevent's reader must not touch it.
        self.wsgi_input = _NO_BODY
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

    def _run_plain_request(self) -> None:
        """A request that is no upgrade: its body dropped in time, then the application."""
        try:
            self._drop_body()
        except TimeoutError:
            logger.info("%s: request body not complete within the handshake timeout "
                        "(%gs): dropped", peer_name(self.client_address),
                        self._settings.handshake_timeout)
            self.close_connection = True
            return
        except OSError as exc:  # the client left mid-body, or sent a malformed chunk
            logger.info("%s: request body unreadable (%s): dropped",
                        peer_name(self.client_address), exc)
            self.close_connection = True
            return
        finally:
            self._end_request_deadline()
        try:
            super().run_application()
        except ResponseStalled as stalled:
            logger.info("%s: %s: dropped", peer_name(self.client_address), stalled)
            self.close_connection = True

    def _drop_body(self) -> None:
        """Read the request body (if any) to its end, within the request deadline.

        websockify's application reads no body; dropping it here, rather than after
        the response as gevent does (under a per-read timeout only), keeps a body
        trickled in byte by byte from holding the connection past the deadline.
        """
        while self.wsgi_input.read(1 << 16):
            # A body that streams in as fast as it is read would never make this
            # greenlet wait: let the others (and the deadline's timer) run.
            gevent.sleep(0)

    def _sendall(self, data: bytes) -> None:
        try:
            super()._sendall(data)
        except TimeoutError:
            raise ResponseStalled(
                f"a write of the response did not complete within "
                f"{self._settings.handshake_timeout:g}s (the client reads too slowly "
                f"or not at all)") from None

    def _upgrade(self, headers: Mapping[str, str]) -> ClientConnection | None:
        """Answer the handshake; returns the connection, or None once refused."""
        request = handshake.UpgradeRequest(
            method=self.command,
            path=self.path,
            headers=headers,
            secure=self.environ.get("wsgi.url_scheme") == "https",
            http_version=self.request_version or "",
        )
        peer = peer_name(self.client_address)
        try:
            body = self._read_body(handshake.body_length(request))
            upgrade = handshake.accept(request, body, self._settings.handshake_options)
            admit = getattr(self.application, "admit", None)
            if admit is not None:
                admit(self.environ)  # origin, token and auth: refused before the 101
            self._server_side.admit_websocket(self.environ)
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


#: gevent's body reader for a request whose body is never read (an upgrade).
_NO_BODY = Input(None, 0)


def _no_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    """start_response for an upgraded connection: the response was the handshake."""
    raise RuntimeError("the WebSocket handshake has already been answered")
