"""Upstream's WebSocket-to-TCP proxy classes: ``WebSocketProxy`` and ``ProxyRequestHandler``.

``WebSocketProxy(**options)`` takes upstream's keywords and serves with
``start_server()`` (see :mod:`websockify.websockifyserver` for how connections are
served).  ``ProxyRequestHandler`` relays one client to its target: a fixed
``target_host``/``target_port``, a ``unix_target``, or the target a token plugin
names.  Subclasses (OpenStack nova's console proxy, for one) override
``new_websocket_client()`` and end with ``self.do_proxy(target_socket)``.

One deliberate difference: the target a token plugin picks belongs to the
connection (``self.target_host``/``self.target_port``/``self.unix_target`` on the
handler); upstream writes it onto the shared server object, which is harmless with
a process per connection and wrong for anything that shares the server.
"""

from __future__ import annotations

import contextlib
import importlib
import selectors
import socket
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlparse

from websockify.errors import ConfigError
from websockify.websocket import WebSocketWantReadError, WebSocketWantWriteError
from websockify.websockifyserver import (
    CClose,
    WebSockifyRequestHandler,
    WebSockifyServer,
    drain_wake_up,
)

__all__ = ["SSL_OPTIONS", "ProxyRequestHandler", "WebSocketProxy", "load_plugin",
           "select_ssl_version", "websockify_init"]

#: Seconds the last client bytes get to reach the target after the client closed.
TARGET_FLUSH_TIMEOUT = 5.0
#: Seconds between checks of the server's stop flag while a relay is idle (a signal
#: handler cannot always wake the relay: inside eventlet's hub it may not write).
STOP_CHECK_INTERVAL = 1.0

#: TLS options per minimum version, for ``ssl_options`` (upstream's names).  Upstream
#: also OR-ed in ``PROTOCOL_SSLv23``, a protocol number that means nothing as an option.
SSL_OPTIONS = {
    "default": ssl.OP_ALL,
    "tlsv1_1": ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_TLSv1,
    "tlsv1_2": ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1,
    "tlsv1_3": ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    | ssl.OP_NO_TLSv1_2,
}


def select_ssl_version(version: str) -> int:
    """The ``ssl_options`` for a minimum TLS version name; the strictest for an unknown name."""
    if version in SSL_OPTIONS:
        return SSL_OPTIONS[version]
    fallback = max(SSL_OPTIONS)  # the names sort from the least to the most strict
    WebSockifyServer.get_logger().warning("TLS version %s unsupported. Falling back to %s",
                                          version, fallback)
    return SSL_OPTIONS[fallback]


def load_plugin(plugin: Any, package: str, source: Any = None) -> Any:
    """A plugin object from an object (returned as is) or a class name.

    A bare name is looked up in ``package`` (``websockify.token_plugins`` or
    ``websockify.auth_plugins``); a dotted name is ``module.Class``.  The class is
    built with ``source``, as upstream's command line does.
    """
    if not isinstance(plugin, str):
        return plugin
    module_name, _, class_name = plugin.rpartition(".")
    module = importlib.import_module(module_name or package)
    try:
        plugin_class = getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"{module.__name__} has no plugin named {class_name!r}") from None
    return plugin_class(source)


class _TargetPart:
    """One part of a connection's target (upstream's handler attribute of that name).

    Set on the handler, it is that connection's alone; unset, it reads the server's,
    as upstream's subclasses expect.  Upstream writes a token's target onto the shared
    server instead, which is harmless only because each connection is its own process.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, handler: Any, owner: type | None = None) -> Any:
        if handler is None:
            return self
        if self.name in handler._target:
            return handler._target[self.name]
        return getattr(handler.server, self.name, None)

    def __set__(self, handler: Any, value: Any) -> None:
        handler._target[self.name] = value


class ProxyRequestHandler(WebSockifyRequestHandler):
    """Relays one WebSocket client to one target socket."""

    buffer_size = 65536

    traffic_legend = """
Traffic Legend:
    }  - Client receive
    }. - Client receive partial
    {  - Target receive

    >  - Target send
    >. - Target send partial
    <  - Client send
    <. - Client send partial
"""

    #: Opens a target (upstream's ``WebSockifyServer.socket``), for subclasses' use.
    socket = staticmethod(WebSockifyServer.socket)

    def __init__(self, req: Any, addr: Any, server: Any) -> None:
        #: This connection's own target, where it differs from the server's.
        self._target: dict[str, Any] = {}
        super().__init__(req, addr, server)

    # -- the target: this connection's choice (token plugin, subclass), else the server's ----

    target_host = _TargetPart()
    target_port = _TargetPart()
    unix_target = _TargetPart()

    def validate_connection(self) -> None:
        """Look the connection's token up with the server's token plugin, if it has one."""
        plugin = getattr(self.server, "token_plugin", None)
        if not plugin:
            return
        plugin = load_plugin(plugin, "websockify.token_plugins",
                             getattr(self.server, "token_source", None))
        host, port = self.get_target(plugin)
        if host == "unix_socket":
            self.target_host, self.target_port, self.unix_target = None, None, port
        else:
            self.target_host, self.target_port, self.unix_target = host, port, None

    def get_target(self, target_plugin: Any) -> tuple[Any, Any]:
        """The (host, port) the plugin gives for this request's token.

        The token is the ``token`` query parameter, or the Host header's name with
        ``host_token``.  Raises the server's ``EClose`` when there is none or the
        plugin does not know it.
        """
        eclose = getattr(self.server, "EClose", WebSockifyServer.EClose)
        if self.host_token:
            token = (self.headers.get("Host") or "").partition(":")[0] or None
        else:
            values = parse_qs(urlparse(self.path).query).get("token")
            token = values[0].rstrip("\n") if values else None
        if token is None:
            raise eclose("Token not present")
        target = target_plugin.lookup(token)
        if target is None:
            raise eclose(f"Token '{token}' not found")
        host, port = target
        return host, port

    def send_auth_error(self, ex: Any) -> None:
        """Answer the upgrade with the authentication plugin's refusal."""
        self.close_connection = True
        self.send_response(ex.code, ex.msg)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "0")
        for name, value in ex.headers.items():
            self.send_header(name, value)
        self.end_headers()

    def auth_connection(self) -> None:
        """Ask the server's auth plugin, if it has one, whether this client may connect.

        Headers named ``SSL_*`` are the server's to set: the client's are dropped,
        and ``SSL_CLIENT_S_DN_CN`` carries the common name of a TLS client certificate.
        """
        plugin = getattr(self.server, "auth_plugin", None)
        if not plugin:
            return
        plugin = load_plugin(plugin, "websockify.auth_plugins",
                             getattr(self.server, "auth_source", None))
        for name in [name for name in self.headers if name.upper().startswith("SSL_")]:
            del self.headers[name]
        common_name = _client_common_name(self.connection)
        if common_name is not None:
            self.headers["SSL_CLIENT_S_DN_CN"] = common_name
        try:
            plugin.authenticate(headers=self.headers, target_host=self.target_host,
                                target_port=self.target_port)
        except Exception as error:
            from websockify.auth_plugins import AuthenticationError  # needed only now

            if isinstance(error, AuthenticationError):
                self.send_auth_error(error)
            raise

    # -- the relay -------------------------------------------------------------------------

    def new_websocket_client(self) -> None:
        """Connect to the target and relay until either side closes."""
        host, port, unix = self.target_host, self.target_port, self.unix_target
        ssl_target = getattr(self.server, "ssl_target", None)
        where = f"unix socket: {unix}" if unix else f"{host}:{port}"
        self.log_message("connecting to %s%s", where, " (using SSL)" if ssl_target else "")
        try:
            tsock = WebSockifyServer.socket(host, port, connect=True, use_ssl=bool(ssl_target),
                                            unix_socket=unix)
        except (OSError, ValueError) as error:
            self.log_message("Failed to connect to %s: %s", where, error)
            raise self.CClose(1011, "Failed to connect to downstream server") from None
        with contextlib.suppress(OSError):
            if not getattr(self.server, "unix_listen", None):
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not unix:
                tsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.print_traffic(self.traffic_legend)
        try:
            self.do_proxy(tsock)
        finally:
            with contextlib.suppress(OSError):
                tsock.shutdown(socket.SHUT_RDWR)
            tsock.close()
            if self.verbose:
                self.log_message("%s: Closed target", where)

    def do_proxy(self, target: Any) -> None:
        """Relay between the client and ``target`` until one of them closes.

        ``target`` is anything with ``recv``, ``send`` and ``fileno`` (a socket, an
        ``ssl.SSLSocket`` …).  Each side is read only when what it feeds has been
        sent, so memory stays bounded by one read per direction.  Ends by raising
        ``CClose``: the client's own close code when it closed, 1000 when the target
        did (after everything the target sent has reached the client).
        """
        client = self.request
        relay = _Relay(self, target)
        client.setblocking(False)
        with contextlib.suppress(AttributeError, OSError):
            target.setblocking(False)
        try:
            relay.run()
        finally:
            client.setblocking(True)
            with contextlib.suppress(AttributeError, OSError):
                target.setblocking(True)
            relay.close()

    # Used by _Relay: the verbose log lines upstream writes at each end.
    def _log_end(self, what: str) -> None:
        if self.verbose:
            self.log_message("%s:%s: %s", self.target_host, self.target_port, what)


class _Relay:
    """The loop of :meth:`ProxyRequestHandler.do_proxy`, on non-blocking sockets.

    It waits with the ``selectors`` module looked up at run time, so under
    eventlet's monkey-patching the wait is green and timers of the program keep
    running.  Input already buffered above the socket (decoded client data, bytes
    decrypted inside a TLS object) is invisible to the wait, so such a side counts
    as readable at once.
    """

    def __init__(self, handler: ProxyRequestHandler, target: Any) -> None:
        self.handler = handler
        self.client = handler.request
        self.target = target
        self.to_target: deque[memoryview] = deque()
        self.selector = selectors.DefaultSelector()
        self.interest: dict[Any, int] = {}
        server = handler.server
        stop_fd = server.stop_requested_fd() if isinstance(server, WebSockifyServer) else None
        self.stop_fd = stop_fd
        if stop_fd is not None:
            self.selector.register(stop_fd, selectors.EVENT_READ)
        heartbeat = getattr(server, "heartbeat", None)
        self.heartbeat = heartbeat if isinstance(heartbeat, int | float) and heartbeat > 0 \
            else None
        self.next_ping = time.monotonic() + self.heartbeat if self.heartbeat else None

    def close(self) -> None:
        self.selector.close()

    def run(self) -> None:
        handler = self.handler
        while True:
            client_output = bool(handler.send_parts) or self.client.output_pending
            want_client = (selectors.EVENT_WRITE if client_output else 0) | (
                0 if self.to_target else selectors.EVENT_READ)
            want_target = (selectors.EVENT_WRITE if self.to_target else 0) | (
                0 if client_output else selectors.EVENT_READ)
            ready = self._wait({self.client.socket: want_client, self.target: want_target})
            if self.stop_fd is not None:
                if ready.get(self.stop_fd, 0):
                    drain_wake_up(self.stop_fd)
                if self.handler.server.terminating:
                    raise WebSockifyServer.Terminate()
            client_events = ready.get(self.client.socket, 0)
            target_events = ready.get(self.target, 0)
            if client_events & selectors.EVENT_WRITE:
                handler.send_frames()
            if target_events & selectors.EVENT_WRITE:
                self._send_to_target()
            if client_events & selectors.EVENT_READ:
                self._read_client()
            if target_events & selectors.EVENT_READ:
                self._read_target()
            self._maybe_ping()

    def _wait(self, wanted: dict[Any, int]) -> dict[Any, int]:
        """Wait for the wanted events; returns {object: events} of what is ready."""
        ready: dict[Any, int] = {}
        for obj, events in wanted.items():
            if events & selectors.EVENT_READ and self._has_buffered_input(obj):
                ready[obj] = selectors.EVENT_READ
            if self.interest.get(obj) != events:
                if obj in self.interest:
                    if events:
                        self.selector.modify(obj, events)
                    else:
                        self.selector.unregister(obj)
                elif events:
                    self.selector.register(obj, events)
                if events:
                    self.interest[obj] = events
                else:
                    self.interest.pop(obj, None)
        timeout = 0.0 if ready else self._timeout()
        for key, events in self.selector.select(timeout):
            ready[key.fileobj] = ready.get(key.fileobj, 0) | events
        return ready

    def _has_buffered_input(self, obj: Any) -> bool:
        """Input the wait cannot see: decoded client data (it arrived with the
        handshake, or with the previous read) or bytes decrypted inside a TLS object."""
        if obj is self.client.socket and self.client.pending():
            return True
        return _tls_pending(obj)

    def _timeout(self) -> float | None:
        """Until the next ping; at most a second while a stop may have to be noticed."""
        timeout = None if self.stop_fd is None else STOP_CHECK_INTERVAL
        if self.next_ping is not None:
            until_ping = max(0.0, self.next_ping - time.monotonic())
            timeout = until_ping if timeout is None else min(timeout, until_ping)
        return timeout

    def _maybe_ping(self) -> None:
        if self.next_ping is not None and time.monotonic() >= self.next_ping:
            assert self.heartbeat is not None
            self.next_ping = time.monotonic() + self.heartbeat
            self.handler.send_ping()

    def _read_client(self) -> None:
        bufs, closed = self.handler.recv_frames()
        self.to_target.extend(memoryview(buf) for buf in bufs if buf)
        if self.to_target and not closed:
            self._send_to_target()  # now: waiting to learn it is writable costs a round trip
        if closed:
            assert isinstance(closed, dict)
            self._flush_target_before_close()
            self.handler._log_end("Client closed connection")
            raise CClose(closed["code"], closed["reason"])

    def _read_target(self) -> None:
        try:
            data = self.target.recv(self.handler.buffer_size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError,
                InterruptedError):
            return
        if not data:
            self.handler._log_end("Target closed connection")
            raise CClose(1000, "Target closed")
        self.handler.print_traffic("{")
        self.handler.send_frames([data])

    def _send_to_target(self) -> None:
        while self.to_target:
            piece = self.to_target[0]
            try:
                sent = self.target.send(piece)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError,
                    InterruptedError):
                self.handler.print_traffic(".>")
                return
            if sent < len(piece):
                self.to_target[0] = piece[sent:]
                self.handler.print_traffic(".>")
                return
            self.to_target.popleft()
            self.handler.print_traffic(">")

    def _flush_target_before_close(self) -> None:
        """The client closed: what it sent before still goes to the target, bounded."""
        if not self.to_target:
            return
        with contextlib.suppress(OSError, AttributeError):
            self.target.settimeout(TARGET_FLUSH_TIMEOUT)
            while self.to_target:
                self.target.sendall(self.to_target.popleft())
                self.handler.print_traffic(">")


def _tls_pending(obj: Any) -> bool:
    """True when a TLS socket holds decrypted bytes that select() cannot see."""
    pending = getattr(obj, "pending", None)
    if not isinstance(obj, ssl.SSLSocket) or pending is None:
        return False
    try:
        return bool(pending())
    except (OSError, ValueError):
        return False


def _client_common_name(connection: Any) -> str | None:
    """The common name in a TLS client's certificate, if it presented one."""
    try:
        subject = connection.getpeercert()["subject"]
        fields = dict(pair[0] for pair in subject)
        return str(fields["commonName"])
    except (TypeError, AttributeError, KeyError, ValueError, IndexError):
        return None


class WebSocketProxy(WebSockifyServer):
    """Relays WebSocket clients to a TCP or unix-socket target; upstream's keywords.

    Besides the server's keywords (:class:`WebSockifyServer`): ``target_host``,
    ``target_port``, ``unix_target``, ``ssl_target``, ``heartbeat`` (seconds between
    pings), ``token_plugin``/``auth_plugin`` (an object, or a class name resolved
    in ``websockify.token_plugins``/``websockify.auth_plugins`` and built with
    ``token_source``/``auth_source``), ``host_token``.  Wrapping a program
    (``wrap_cmd``) is the command line's job and is refused here.
    """

    buffer_size = 65536

    def __init__(self, RequestHandlerClass: Any = ProxyRequestHandler,
                 *args: Any, **kwargs: Any) -> None:
        self.target_host = kwargs.pop("target_host", None)
        self.target_port = kwargs.pop("target_port", None)
        self.wrap_cmd = kwargs.pop("wrap_cmd", None)
        self.wrap_mode = kwargs.pop("wrap_mode", None)
        self.unix_target = kwargs.pop("unix_target", None)
        self.ssl_target = kwargs.pop("ssl_target", None)
        self.heartbeat = kwargs.pop("heartbeat", None)
        self.token_plugin = kwargs.pop("token_plugin", None)
        self.token_source = kwargs.pop("token_source", None)
        self.host_token = kwargs.pop("host_token", None)
        self.auth_plugin = kwargs.pop("auth_plugin", None)
        self.auth_source = kwargs.pop("auth_source", None)
        if self.wrap_cmd:
            raise ConfigError("wrap_cmd: the library server does not wrap programs; "
                             "run the websockify command with '-- COMMAND' instead")
        super().__init__(RequestHandlerClass, *args, **kwargs)

    def start_server(self) -> None:
        # Plugin names are resolved now, so a wrong one fails before serving.
        self.token_plugin = load_plugin(self.token_plugin, "websockify.token_plugins",
                                        self.token_source)
        self.auth_plugin = load_plugin(self.auth_plugin, "websockify.auth_plugins",
                                       self.auth_source)
        super().start_server()

    def started(self) -> None:
        destination = self.unix_target or f"{self.target_host}:{self.target_port}"
        if self.listen_fd is not None:
            source = "inetd"
        elif self.unix_listen is not None:
            source = self.unix_listen
        else:
            source = self.listening_on()
        if self.token_plugin:
            line = (f"  - proxying from {source} to targets generated by "
                    f"{type(self.token_plugin).__name__}")
        else:
            line = f"  - proxying from {source} to {destination}"
        self.msg("%s%s", line, " (using SSL)" if self.ssl_target else "")


def websockify_init() -> None:
    """Upstream's command-line entry point: runs this project's command line."""
    from websockify.cli import main

    main()


# Upstream's handler reads these; keep them visible where upstream's users look.
__all__ += ["WebSocketWantReadError", "WebSocketWantWriteError"]
