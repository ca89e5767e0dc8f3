"""Upstream's library server: an ``http.server`` handler with WebSockets, one process per client.

Programs that import websockify (OpenStack nova's console proxies, ironic, zun …)
subclass :class:`WebSockifyRequestHandler` (usually through
:class:`websockify.websocketproxy.ProxyRequestHandler`) and run
:class:`WebSockifyServer`.  This layer uses only the standard library and the
sans-I/O protocol core, so it works under eventlet's monkey-patching and with
plain threads; the gevent server of the command line is not imported.

How a connection is served:

1. :meth:`WebSockifyServer.start_server` accepts and forks a child with
   ``os.fork`` (nothing is pickled, whatever multiprocessing's start method is).
   Each child owns one client, so per-connection changes to ``self.server`` or to
   global state stay in it.
2. :meth:`WebSockifyServer.do_handshake` peeks at the first byte and wraps TLS
   (``wss://``) when it is a TLS record, then builds the request handler, which
   handles the request in its constructor as ``http.server`` handlers do.
3. An upgrade request is validated (``validate_connection``, ``auth_connection``)
   and answered by the same handshake code as the gevent server
   (:mod:`websockify.protocol.handshake`): RFC 6455 and the Hixie drafts, the
   binary and base64 subprotocols, and the same refusals.  ``self.request`` becomes
   a :class:`~websockify.websocket.WebSocket` and ``new_websocket_client()`` runs.
4. On shutdown every child is asked to stop (SIGTERM: clients get Close 1001) and
   is killed if it has not exited after :data:`CHILD_STOP_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import ssl
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from http.server import SimpleHTTPRequestHandler
from types import FrameType
from typing import Any

from websockify.codec_adapter import FrameStream
from websockify.errors import ConfigError, HandshakeError
from websockify.protocol import handshake
from websockify.stdlib_http import lower_case_headers, take_buffered_input
from websockify.websocket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    WebSocketWantReadError,
    WebSocketWantWriteError,
)
from websockify.websocketserver import HttpWebSocket, WebSocketRequestHandlerMixIn

try:
    import resource
except ImportError:  # not on every platform; only daemonizing needs it
    resource = None  # type: ignore[assignment]

__all__ = ["CClose", "CompatibleWebSocket", "WebSockifyRequestHandler", "WebSockifyServer"]

#: Seconds each read of an HTTP request (and the TLS handshake) may wait for the client.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds to wait for the client's answer to our Close before hanging up.
CLOSE_TIMEOUT = 2.0
#: Seconds children get to say goodbye to their clients on shutdown before SIGKILL.
CHILD_STOP_TIMEOUT = 5.0
#: Clients served at once (one process each, about 3.5 MiB of unshared memory) before 503.
DEFAULT_MAX_CONNECTIONS = 1024
#: The first bytes of a TLS ClientHello (handshake record) or an SSLv2-style hello.
_TLS_FIRST_BYTES = (0x16, 0x80)


class CClose(Exception):
    """Raised inside ``new_websocket_client()`` to close the WebSocket: ``CClose(code, reason)``."""


class CompatibleWebSocket(HttpWebSocket):
    """Picks "binary" when an old websockify client still offers subprotocols."""

    def select_subprotocol(self, protocols: list[str]) -> str:
        return "binary" if "binary" in protocols else ""


def _setting(owner: Any, name: str, default: Any, kind: type | tuple[type, ...]) -> Any:
    """``owner.name`` when it has the expected type, else ``default``.

    Handlers read their configuration from whatever server object they are given
    (upstream's, a test double, a mock), so a missing or odd attribute means "default".
    """
    value = getattr(owner, name, default)
    if kind is bool:
        return value if isinstance(value, bool) else default
    if isinstance(value, bool) or not isinstance(value, kind):
        return default
    return value


class WebSockifyRequestHandler(WebSocketRequestHandlerMixIn, SimpleHTTPRequestHandler):
    """A ``SimpleHTTPRequestHandler`` that also serves WebSockets.

    Subclasses implement ``new_websocket_client()``.  The handler reads its
    configuration from attributes of the server it is given, each optional:
    ``only_upgrade`` (refuse plain GETs with 405), ``web`` (the directory files
    are served from), ``file_only`` (no directory listings), ``web_auth``,
    ``verbose``, ``record`` (a file name prefix for frame recordings), ``run_once``,
    ``handler_id``, ``traffic``, ``host_token``, ``logger``, ``max_message_size``
    and ``allow_hixie``.  The server sets the socket's timeout for the request
    (``handshake_timeout``); the WebSocket then blocks without one.
    """

    server_version = "WebSockify"
    protocol_version = "HTTP/1.1"
    SocketClass = CompatibleWebSocket
    CClose = CClose

    def __init__(self, req: Any, addr: Any, server: Any) -> None:
        self.only_upgrade = getattr(server, "only_upgrade", False)
        self.verbose = getattr(server, "verbose", False)
        self.daemon = getattr(server, "daemon", False)
        self.record = getattr(server, "record", False)
        self.run_once = getattr(server, "run_once", False)
        self.handler_id = getattr(server, "handler_id", False)
        self.file_only = getattr(server, "file_only", False)
        self.traffic = getattr(server, "traffic", False)
        self.web_auth = getattr(server, "web_auth", False)
        self.host_token = getattr(server, "host_token", False)
        self.rec: Any = None
        self.send_parts: deque[bytes] = deque()
        self.start_time = 0
        self.logger = getattr(server, "logger", None) or WebSockifyServer.get_logger()
        web = getattr(server, "web", None)
        directory = web if isinstance(web, str) and web else None
        super().__init__(req, addr, server, directory=directory)

    # -- logging ---------------------------------------------------------------------

    def _client_host(self) -> str:
        address = self.client_address
        if isinstance(address, tuple | list) and address:
            return str(address[0])
        return str(address or "unix")

    def log_message(self, format: str, *args: Any) -> None:
        self.logger.info("%s - - [%s] %s", self._client_host(), self.log_date_time_string(),
                         format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.verbose:
            super().log_request(code, size)

    def print_traffic(self, token: str = ".") -> None:
        """With ``traffic`` on, show each frame as a character on standard output."""
        if self.traffic:
            sys.stdout.write(token)
            sys.stdout.flush()

    def msg(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at INFO, prefixed with the connection's number."""
        self.logger.log(logging.INFO, f"{self._prefix()}{msg}", *args, **kwargs)

    def vmsg(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG, prefixed with the connection's number."""
        self.logger.log(logging.DEBUG, f"{self._prefix()}{msg}", *args, **kwargs)

    def warn(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at WARNING, prefixed with the connection's number."""
        self.logger.log(logging.WARNING, f"{self._prefix()}{msg}", *args, **kwargs)

    def _prefix(self) -> str:
        try:
            return f"{int(self.handler_id):3d}: "
        except (TypeError, ValueError):
            return ""

    # -- frames ------------------------------------------------------------------------

    def send_frames(self, bufs: Iterable[bytes] | None = None) -> bool:
        """Queue ``bufs`` as messages and send what the socket takes.

        Returns True when some output still waits for the socket to be writable
        (call again, with no arguments, once it is).
        """
        if bufs:
            for buf in bufs:
                self._record("{", buf)
                self.send_parts.append(buf)
        while self.send_parts:
            try:
                self.request.sendmsg(self.send_parts[0])
            except WebSocketWantWriteError:
                self.print_traffic("<.")
                return True
            self.send_parts.popleft()
            self.print_traffic("<")
        return bool(self.request.flush())

    def recv_frames(self) -> tuple[list[bytes], dict[str, Any] | bool]:
        """Data received from the client, and ``False`` or ``{"code", "reason"}`` once it closed.

        On a blocking socket this waits for the next read; the list may be empty when
        that read carried only control frames.
        """
        bufs: list[bytes] = []
        while True:
            try:
                buf = self.request.recvmsg()
            except (WebSocketWantReadError, WebSocketWantWriteError):
                self.print_traffic("}.")
                break
            if buf is None:
                return bufs, {"code": self.request.close_code, "reason": self.request.close_reason}
            self.print_traffic("}")
            self._record("}", buf)
            bufs.append(buf)
            if not self.request.pending():
                break
        return bufs, False

    def _record(self, direction: str, buf: bytes) -> None:
        """One entry of the ``record`` file, upstream's JavaScript array of frames.

        ``'{MS{DATA'`` for data sent to the client and ``'}MS}DATA'`` for data
        received, MS milliseconds into the connection, DATA escaped as a JS string.
        """
        if self.rec is None:
            return
        delta = int(time.time() * 1000) - self.start_time
        text = buf.decode("latin-1").encode("unicode_escape").decode("ascii").replace("'", "\\'")
        self.rec.write(f"'{direction}{delta}{direction}{text}',\n")

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with the client."""
        self.request.shutdown(socket.SHUT_RDWR, code, reason)

    def send_pong(self, data: bytes = b"") -> None:
        self.request.pong(data)

    def send_ping(self, data: bytes = b"") -> None:
        self.request.ping(data)

    # -- requests ----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        self._request_deadline(True)  # the first request's deadline started at accept
        super().handle_one_request()

    def parse_request(self) -> bool:
        """As the standard one, and an upgrade asked with another method than GET gets 405."""
        self._request_deadline(False)
        if not super().parse_request():
            return False
        if self.command != "GET" and self.is_websocket_request():
            self._accept_upgrade()  # refuses it, as the gevent server does
            return False
        return True

    def _request_deadline(self, running: bool) -> None:
        """Start or stop the whole-request deadline, where the server keeps one."""
        if isinstance(self.server, WebSockifyServer):
            self.server.request_deadline(self.connection, running)

    def do_GET(self) -> None:
        if self.is_websocket_request():
            self.handle_upgrade()
            return
        if self.web_auth:
            self.auth_connection()
        if self.only_upgrade:
            self.send_error(405)
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        if self.web_auth:
            self.auth_connection()
        if self.only_upgrade:
            self.send_error(405)
        else:
            super().do_HEAD()

    def list_directory(self, path: str | os.PathLike[str]) -> Any:
        if self.file_only:
            self.send_error(404)
            return None
        return super().list_directory(path)

    def handle(self) -> None:
        # With run_once everything runs in the server's process: one request, then return.
        if self.run_once:
            self.handle_one_request()
        else:
            super().handle()

    def finish(self) -> None:
        if self.rec is not None:
            self.rec.write("'EOF'];\n")
            self.rec.close()
            self.rec = None
        super().finish()

    # -- the WebSocket upgrade --------------------------------------------------------------

    def handle_upgrade(self) -> None:
        """Check the connection, answer the handshake, then serve the WebSocket."""
        eclose = getattr(self.server, "EClose", WebSockifyServer.EClose)
        try:
            self.validate_connection()
        except eclose as error:
            self._refuse(HandshakeError("no target for this connection", status=403),
                         str(error))
            return
        self.auth_connection()
        websocket = self._accept_upgrade()
        if websocket is None:
            return
        self.request = websocket
        self.close_connection = True
        self.handle_websocket()

    def _accept_upgrade(self) -> Any:
        """Answer the upgrade with the core's handshake; None when it was refused."""
        request = handshake.UpgradeRequest(
            method=self.command, path=self.path, headers=lower_case_headers(self.headers),
            secure=isinstance(self.connection, ssl.SSLSocket))
        options = handshake.HandshakeOptions(
            max_message_size=_setting(self.server, "max_message_size",
                                      DEFAULT_MAX_MESSAGE_SIZE, int),
            allow_hixie=_setting(self.server, "allow_hixie", True, bool))
        try:
            body = self._read_handshake_body(handshake.body_length(request))
            upgrade = handshake.accept(request, body, options)
        except HandshakeError as error:
            self._refuse(error, error.reason)
            return None
        self.wfile.write(upgrade.response)
        self.wfile.flush()
        buffered = take_buffered_input(self.rfile, self.connection)
        self.connection.settimeout(None)  # the WebSocket blocks, as upstream's does
        websocket = self.SocketClass(self)
        websocket.attach(self.connection, FrameStream(upgrade.codec), buffered)
        self.vmsg("WebSocket %s, subprotocol %s", upgrade.version, websocket.protocol or "none")
        return websocket

    def _read_handshake_body(self, length: int) -> bytes:
        if not length:
            return b""
        try:
            body: bytes = self.rfile.read(length)
        except TimeoutError:
            body = b""
        if len(body) != length:
            raise HandshakeError(f"the {length}-byte handshake body did not arrive")
        return body

    def _refuse(self, error: HandshakeError, detail: str) -> None:
        """Answer a refused upgrade exactly as the gevent server does, and log why."""
        self.close_connection = True
        self.msg("%s: refused WebSocket upgrade (%d): %s", self._client_host(), error.status,
                 detail)
        with contextlib.suppress(OSError):
            self.wfile.write(handshake.error_response(error))
            self.wfile.flush()

    def handle_websocket(self) -> None:
        """Run ``new_websocket_client()``; end with a closing handshake whatever happens."""
        with contextlib.suppress(AttributeError):
            self.server.ws_connection = True  # type: ignore[attr-defined]
        self.start_time = int(time.time() * 1000)
        scheme = "SSL/TLS (wss://)" if isinstance(self.connection, ssl.SSLSocket) else \
            "Plain non-SSL (ws://)"
        self.log_message("%s: %s WebSocket connection", self._client_host(), scheme)
        if self.path != "/":
            self.log_message("%s: Path: '%s'", self._client_host(), self.path)
        if self.record:
            name = f"{self.record}.{self.handler_id}"
            self.log_message("opening record file: %s", name)
            self.rec = open(name, "w+")  # noqa: SIM115 (closed in finish())
            self.rec.write("var VNC_frame_data = [\n")
        try:
            self.new_websocket_client()
        except CClose as close:
            code, reason = (*close.args, 1000, "")[:2]
            self._close_websocket(code, reason)
        except WebSockifyServer.Terminate:
            self._close_websocket(1001, "server shutting down")
        except BaseException:
            self._close_websocket(1011, "internal error")
            raise
        else:
            self._close_websocket(1000, "")

    def _close_websocket(self, code: int, reason: str) -> None:
        """Send our Close (unless one was sent) and wait, bounded, for the client's."""
        websocket = self.request
        deadline = time.monotonic() + CLOSE_TIMEOUT
        try:
            websocket.settimeout(CLOSE_TIMEOUT)
            self.send_close(code, reason)
            while not websocket.input_closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                websocket.settimeout(remaining)
                with contextlib.suppress(WebSocketWantReadError):
                    websocket.recvmsg()
        except (OSError, AttributeError):
            pass  # the client is gone (or the socket is already closed)

    # -- to override -----------------------------------------------------------------------

    def new_websocket_client(self) -> None:
        """Serve the WebSocket in ``self.request``; subclasses must implement this."""
        raise NotImplementedError(
            f"{type(self).__name__}.new_websocket_client() must be implemented")

    def validate_connection(self) -> None:
        """Check the connection before the handshake (e.g. its token); raise EClose to refuse."""

    def auth_connection(self) -> None:
        """Check the client's credentials before the handshake; raise to refuse."""


class WebSockifyServer:
    """Listens, forks one child per client, and runs the request handler in it.

    Construction only stores the settings; :meth:`start_server` opens the listener
    and serves until :meth:`terminate` (or SIGINT/SIGTERM, or ``timeout``,
    ``idle_timeout`` or ``run_once``).
    """

    log_prefix = "websocket"

    class EClose(Exception):
        """Raised before the WebSocket exists: the connection is dropped, with a log line."""

    class Terminate(Exception):
        """The server is shutting down."""

    def __init__(self, RequestHandlerClass: Callable[..., Any],
                 listen_fd: int | None = None, listen_host: str | None = "",
                 listen_port: int | str | None = None, source_is_ipv6: bool = False,
                 verbose: bool = False, cert: str = "", key: str | None = "",
                 key_password: str | None = None, ssl_only: bool | None = None,
                 verify_client: bool = False, cafile: str | None = None,
                 daemon: bool = False, record: str | None = "", web: str | None = "",
                 web_auth: bool = False, file_only: bool = False, run_once: bool = False,
                 timeout: float = 0, idle_timeout: float = 0, traffic: bool = False,
                 tcp_keepalive: bool = True, tcp_keepcnt: int | None = None,
                 tcp_keepidle: int | None = None, tcp_keepintvl: int | None = None,
                 ssl_ciphers: str | None = None, ssl_options: int = 0,
                 unix_listen: str | None = None, unix_listen_mode: int | None = None,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 allow_hixie: bool = True,
                 max_connections: int | None = DEFAULT_MAX_CONNECTIONS) -> None:
        self.RequestHandlerClass = RequestHandlerClass
        self.verbose = verbose
        self.listen_fd = listen_fd
        self.unix_listen = unix_listen
        self.unix_listen_mode = 0o600 if unix_listen_mode is None else unix_listen_mode
        self.listen_host = listen_host or ""
        self.listen_port = int(listen_port) if isinstance(listen_port, str) else listen_port
        self.prefer_ipv6 = source_is_ipv6
        self.ssl_only = ssl_only
        self.ssl_ciphers = ssl_ciphers
        self.ssl_options = ssl_options
        self.verify_client = verify_client
        self.daemon = daemon
        self.run_once = run_once
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.traffic = traffic
        self.file_only = file_only
        self.web_auth = web_auth
        self.handshake_timeout = handshake_timeout
        self.max_message_size = max_message_size
        self.allow_hixie = allow_hixie
        self.max_connections = max_connections
        self.tcp_keepalive = tcp_keepalive
        self.tcp_keepcnt = tcp_keepcnt
        self.tcp_keepidle = tcp_keepidle
        self.tcp_keepintvl = tcp_keepintvl
        # Paths are made absolute now: a daemon changes its directory.
        self.cert = os.path.abspath(cert) if cert else ""
        self.key = os.path.abspath(key) if key else None
        self.key_password = key_password
        self.web = os.path.abspath(web) if web else ""
        self.record = os.path.abspath(record) if record else ""
        self.cafile = os.path.abspath(cafile) if cafile else ""
        self.only_upgrade = not self.web
        if self.daemon and resource is None:
            raise ConfigError("daemon mode needs the 'resource' module")

        self.launch_time = time.time()
        self.ws_connection = False
        self.handler_id = 1
        self.terminating = False
        self.logger = self.get_logger()
        #: The address the listener is bound to, once :meth:`start_server` opened it.
        self.server_address: Any = None
        self._children: set[int] = set()
        self._wake: tuple[int, int] | None = None
        #: True in a connection's child process (see :meth:`request_deadline`).
        self._in_child = False
        self._request_expired = False

    # -- static helpers (upstream's API) ---------------------------------------------------

    @staticmethod
    def get_logger() -> logging.Logger:
        return logging.getLogger(f"{WebSockifyServer.log_prefix}.server")

    @staticmethod
    def socket(host: str | None, port: int | str | None = None, connect: bool = False,
               prefer_ipv6: bool = False, unix_socket: str | None = None,
               unix_socket_mode: int | None = None, unix_socket_listen: bool = False,
               use_ssl: bool = False, tcp_keepalive: bool = True,
               tcp_keepcnt: int | None = None, tcp_keepidle: int | None = None,
               tcp_keepintvl: int | None = None) -> socket.socket:
        """A connected (``connect=True``) or listening TCP or unix socket.

        ``host`` is resolved to IPv4 first (IPv6 first with ``prefer_ipv6``);
        ``use_ssl`` wraps a connected socket in TLS, verifying the server's
        certificate against the system's authorities.
        """
        if unix_socket:
            return _unix_socket(unix_socket, unix_socket_listen, unix_socket_mode)
        if connect and not port:
            raise ValueError("connecting needs a port")
        if use_ssl and not connect:
            raise ValueError("TLS is only supported when connecting")
        flags = 0 if connect else socket.AI_PASSIVE
        addresses = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM,
                                       socket.IPPROTO_TCP, flags)
        if not addresses:
            raise OSError(f"could not resolve host {host!r}")
        addresses.sort(key=lambda info: info[0], reverse=prefer_ipv6)
        family, kind, proto, _, address = addresses[0]
        sock = socket.socket(family, kind, proto)
        try:
            if tcp_keepalive:
                _set_keepalive(sock, tcp_keepcnt, tcp_keepidle, tcp_keepintvl)
            if connect:
                sock.connect(address)
                if use_ssl:
                    context = ssl.create_default_context()
                    return context.wrap_socket(sock, server_hostname=host)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(100)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def daemonize(keepfd: Iterable[int] | None = None, chdir: str | None = "/") -> None:
        """Detach from the terminal: double fork, new session, stdio to /dev/null.

        Every open descriptor but ``keepfd`` is closed.
        """
        keep = set(keepfd or ())
        os.umask(0)
        os.chdir(chdir or "/")
        os.setgid(os.getgid())  # drop set-group-id privileges
        os.setuid(os.getuid())  # drop set-user-id privileges
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in sorted(_open_descriptors(), reverse=True):
            if fd in keep:
                continue
            try:
                os.close(fd)
            except OSError as error:
                if error.errno != errno.EBADF:
                    raise
        devnull = os.open(os.devnull, os.O_RDWR)
        for stream in (sys.stdin, sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())
        if devnull > 2:
            os.close(devnull)

    # -- one connection ----------------------------------------------------------------------

    def do_handshake(self, sock: Any, address: Any) -> Any:
        """Wrap TLS if the client speaks it, then handle the request; returns the socket used."""
        ready = select.select([sock], [], [], self.handshake_timeout)[0]
        if not ready:
            raise self.EClose("")
        first = sock.recv(1024, socket.MSG_PEEK)
        if not first:
            raise self.EClose("")
        if first[0] in _TLS_FIRST_BYTES:
            client = self._wrap_tls(sock)
        elif self.ssl_only:
            raise self.EClose("non-SSL connection received but disallowed")
        else:
            client = sock
        if isinstance(address, tuple) and len(address) == 2:
            address = (address[0], address[1], client is not sock)
        self.RequestHandlerClass(client, address, self)
        return client

    def _wrap_tls(self, sock: Any) -> Any:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if self.ssl_ciphers is not None:
            context.set_ciphers(self.ssl_ciphers)
        _apply_ssl_options(context, self.ssl_options)
        try:
            context.load_cert_chain(certfile=self.cert, keyfile=self.key,
                                    password=self.key_password)
        except (OSError, ssl.SSLError) as error:
            raise self.EClose(f"SSL connection but certificate '{self.cert}' "
                              f"cannot be loaded: {error}") from None
        if self.verify_client:
            context.verify_mode = ssl.CERT_REQUIRED
            if self.cafile:
                context.load_verify_locations(cafile=self.cafile)
            else:
                context.set_default_verify_paths()
        try:
            return context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as error:
            raise self.EClose(f"TLS handshake failed: {error}") from None

    def request_deadline(self, sock: Any, running: bool) -> None:
        """In a connection's child: drop the client unless its request arrives in time.

        The whole request head (and the TLS handshake before the first one) must
        arrive within ``handshake_timeout`` seconds, however slowly it trickles in;
        then the client socket is shut down, which ends the read waiting for it.
        Each read also waits at most that long, which is all there is elsewhere
        (``run_once``, handlers run by other servers): a timer signal is
        process-wide, so only a process serving one client may use it.
        """
        if not self._in_child or not self.handshake_timeout:
            return
        if not running:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return

        def expire(sig: int, stack: FrameType | None) -> None:
            self._request_expired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        try:
            signal.signal(signal.SIGALRM, expire)
        except ValueError:  # not the main thread: no timer (its default action would kill)
            return
        signal.setitimer(signal.ITIMER_REAL, self.handshake_timeout)

    def top_new_client(self, startsock: Any, address: Any) -> None:
        """Serve one accepted connection (in its child, or inline with ``run_once``)."""
        client = None
        host = address[0] if isinstance(address, tuple | list) and address else address
        try:
            with contextlib.suppress(AttributeError, OSError):
                startsock.settimeout(self.handshake_timeout)
            self.request_deadline(startsock, True)
            client = self.do_handshake(startsock, address)
        except self.EClose as error:
            if error.args and error.args[0]:
                self.msg("%s: %s", host, error.args[0])
        except self.Terminate:
            raise
        except ConnectionError as error:
            self.msg("%s: connection lost: %s", host, error)
        except Exception as error:
            self.msg("handler exception: %s", error)
            self.vmsg("exception", exc_info=True)
        finally:
            self.request_deadline(startsock, False)
            if self._request_expired:
                self.msg("%s: request not complete within %s s; connection dropped", host,
                         self.handshake_timeout)
            if client is not None and client is not startsock:
                client.close()

    # -- logging (upstream's API) ----------------------------------------------------------

    def msg(self, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.INFO, *args, **kwargs)

    def vmsg(self, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, *args, **kwargs)

    def warn(self, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.WARNING, *args, **kwargs)

    def get_log_fd(self) -> list[int]:
        """Descriptors of file log handlers, kept open when daemonizing."""
        descriptors = []
        for handler in logging.getLogger().handlers + self.logger.handlers:
            if isinstance(handler, logging.FileHandler) and handler.stream is not None:
                descriptors.append(handler.stream.fileno())
        return descriptors

    # -- hooks for subclasses ----------------------------------------------------------------

    def started(self) -> None:
        """Called once the listener is open (after daemonizing)."""
        self.vmsg("WebSockets server started")

    def poll(self) -> None:
        """Called about once a second while waiting for connections."""

    # -- the server loop -----------------------------------------------------------------------

    def terminate(self) -> None:
        """Stop serving: :meth:`start_server` returns after stopping the children.

        Safe from a signal handler and from another thread.
        """
        self.terminating = True
        self._wake_up()

    def _wake_up(self, *signal_args: Any) -> None:
        """Make the server's (or relay's) wait return now, so it looks at the flags.

        Inside eventlet's hub a signal handler may not write (eventlet refuses
        blocking calls there): the waits also return every second, so the flags
        are seen then.
        """
        if self._wake is not None:
            with contextlib.suppress(OSError, RuntimeError):
                os.write(self._wake[1], b"\0")

    def stop_requested_fd(self) -> int | None:
        """A descriptor that becomes readable when this process may have to stop.

        It only wakes a wait; ``terminating`` says whether to stop (see
        :func:`drain_wake_up`).
        """
        return self._wake[0] if self._wake is not None else None

    def do_SIGINT(self, sig: int, stack: FrameType | None) -> None:
        self.terminate()

    def do_SIGTERM(self, sig: int, stack: FrameType | None) -> None:
        self.terminate()

    def start_server(self) -> None:
        """Open the listener, then accept and serve clients until told to stop."""
        try:
            lsock = self._open_listener()
        except OSError as error:
            self.msg("Opening socket failed: %s", error)
            raise
        if self.daemon:
            self.daemonize(keepfd=[*self.get_log_fd(), lsock.fileno()], chdir=self.web)
        self._log_settings()
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        saved_signals = self._install_signals()
        self.started()
        last_active = self.launch_time
        try:
            while not self.terminating:
                startsock = None
                try:
                    self._reap_children()
                    now = time.time()
                    if self.timeout and now - self.launch_time > self.timeout:
                        self.msg("listener exit due to --timeout %s", self.timeout)
                        break
                    if self._children:
                        last_active = now
                    elif self.idle_timeout and now - last_active > self.idle_timeout:
                        self.msg("listener exit due to --idle-timeout %s", self.idle_timeout)
                        break
                    self.poll()
                    ready = select.select([lsock, self._wake[0]], [], [], 1)[0]
                    if self._wake[0] in ready:
                        drain_wake_up(self._wake[0])
                    if lsock not in ready or self.terminating:
                        continue
                    startsock, address = lsock.accept()
                    if self.unix_listen is not None:
                        address = [self.unix_listen]
                    self._serve(lsock, startsock, address)
                    if self.run_once and self.ws_connection:
                        self.msg("%s: exiting due to --run-once", address[0])
                        break
                    self.handler_id += 1
                except (self.Terminate, SystemExit, KeyboardInterrupt):
                    self.msg("In exit")
                    break
                except Exception as error:
                    self.msg("handler exception: %s", error)
                    self.vmsg("exception", exc_info=True)
                    time.sleep(0.1)  # a failing accept or poll() must not spin the CPU
                finally:
                    if startsock is not None:
                        startsock.close()
        finally:
            self._stop_children()
            self.vmsg("Closing socket listening at %s", self.unix_listen or self.listening_on())
            lsock.close()
            if self.unix_listen is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_listen)
            for sig, handler in saved_signals.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _open_listener(self) -> Any:
        if self.listen_fd is not None:
            lsock = socket.socket(fileno=os.dup(self.listen_fd))
        elif self.unix_listen is not None:
            lsock = self.socket(host=None, unix_socket=self.unix_listen,
                                unix_socket_mode=self.unix_listen_mode,
                                unix_socket_listen=True)
        else:
            lsock = self.socket(self.listen_host, self.listen_port, False, self.prefer_ipv6,
                                tcp_keepalive=self.tcp_keepalive,
                                tcp_keepcnt=self.tcp_keepcnt, tcp_keepidle=self.tcp_keepidle,
                                tcp_keepintvl=self.tcp_keepintvl)
        with contextlib.suppress(OSError, AttributeError, TypeError):
            self.server_address = lsock.getsockname()
        return lsock

    def listening_on(self) -> str:
        """host:port of the TCP listener: the bound address once open, else the settings."""
        address = self.server_address
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = address[0], address[1]
        else:
            host, port = self.listen_host, self.listen_port
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def _log_settings(self) -> None:
        self.msg("WebSocket server settings:")
        if self.listen_fd is not None:
            self.msg("  - Listen for inetd connections")
        elif self.unix_listen is not None:
            self.msg("  - Listen on unix socket %s", self.unix_listen)
        else:
            self.msg("  - Listen on %s", self.listening_on())
        if self.web:
            listing = " (no directory listings)" if self.file_only else ""
            self.msg("  - Web server%s. Web root: %s", listing, self.web)
        if self.cert and os.path.exists(self.cert):
            self.msg("  - SSL/TLS support")
            if self.ssl_only:
                self.msg("  - Deny non-SSL/TLS connections")
        else:
            self.msg("  - No SSL/TLS support (no cert file)")
        if self.daemon:
            self.msg("  - Backgrounding (daemon)")
        if self.record:
            self.msg("  - Recording to '%s.*'", self.record)

    def _install_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM stop the server; SIGCHLD wakes it to reap the child at once.

        Only the main thread may set handlers; elsewhere children are reaped within
        a second and the caller stops the server with :meth:`terminate`.
        """
        saved: dict[int, Any] = {}
        for sig, handler in ((signal.SIGINT, self.do_SIGINT), (signal.SIGTERM, self.do_SIGTERM),
                             (signal.SIGCHLD, self._wake_up)):
            previous = signal.getsignal(sig)
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (eventlet's patched threading can't tell)
                break
            saved[sig] = previous
        return saved

    def _serve(self, lsock: Any, startsock: Any, address: Any) -> None:
        """Serve the client inline (``run_once``) or in a forked child."""
        if self.run_once:
            self.top_new_client(startsock, address)
            return
        if self.max_connections and len(self._children) >= self.max_connections:
            self.warn("%s: refused: %d connections already (max_connections)", address[0],
                      len(self._children))
            _send_quietly(startsock, _TOO_MANY_CONNECTIONS)
            return
        self.vmsg("%s: new handler process", address[0])
        pid = os.fork()
        if pid:
            self._children.add(pid)
            return
        status = 0
        try:
            self._become_child(lsock)
            self.top_new_client(startsock, address)
        except BaseException:
            status = 1
            self.vmsg("exception", exc_info=True)
        finally:
            os._exit(status)

    def _become_child(self, lsock: Any) -> None:
        """Drop what belongs to the parent: its listener, wake-up pipe and children."""
        lsock.close()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        self._children = set()
        self.terminating = False
        self._in_child = True
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the child's own children are its code's

    def _reap_children(self) -> None:
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)

    def _stop_children(self) -> None:
        """SIGTERM every child (its client gets Close 1001); SIGKILL the ones that linger."""
        for pid in self._children:
            self.msg("Terminating child %s", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT
        while self._children and time.monotonic() < deadline:
            self._reap_children()
            if self._children:
                time.sleep(0.05)
        for pid in self._children:
            self.warn("Child %s did not stop in %s s; killing it", pid, CHILD_STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._children.clear()


#: Upstream's way to ask for a minimum TLS version (see ``select_ssl_version``), and
#: the version each flag, with the ones before it, leaves as the lowest.
_TLS_FLOOR_FLAGS = (
    (ssl.OP_NO_TLSv1, ssl.TLSVersion.TLSv1_1),
    (ssl.OP_NO_TLSv1_1, ssl.TLSVersion.TLSv1_2),
    (ssl.OP_NO_TLSv1_2, ssl.TLSVersion.TLSv1_3),
)


def _apply_ssl_options(context: Any, options: int) -> None:
    """OR upstream's ``ssl_options`` into the context's options.

    The OP_NO_TLS* flags in them are deprecated in Python (and warn), so they also
    become the context's ``minimum_version``, the supported way to say the same;
    the options are then set with that warning silenced.
    """
    floor = None
    for flag, version in _TLS_FLOOR_FLAGS:
        if not options & flag:
            break
        floor = version
    if floor is not None and context.minimum_version < floor:
        context.minimum_version = floor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.options |= options


_TOO_MANY_CONNECTIONS = handshake.error_response(
    HandshakeError("Too many connections, try later", status=503))


def _send_quietly(sock: Any, data: bytes) -> None:
    """One non-blocking send of a refusal; a client that cannot take it gets nothing."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(data)


def _unix_socket(path: str, listen: bool, mode: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not listen:
            sock.connect(path)
            return sock
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_mask = os.umask(0o777 ^ (0o600 if mode is None else mode))
        try:
            sock.bind(path)
        finally:
            os.umask(old_mask)
        sock.listen(100)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_keepalive(sock: socket.socket, count: int | None, idle: int | None,
                   interval: int | None) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPCNT", count), ("TCP_KEEPIDLE", idle),
                          ("TCP_KEEPINTVL", interval)):
        if value and hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _open_descriptors() -> list[int]:
    """This process's open descriptors (from /proc when there is one)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        limit = 256
        if resource is not None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY:
                limit = soft
        return list(range(limit))


def drain_wake_up(fd: int) -> None:
    """Empty the wake-up pipe: its bytes only say "look at the flags".

    One read, only after the wait said the pipe is readable: under eventlet a
    second read of an empty pipe would wait for data instead of failing.
    """
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 4096)
