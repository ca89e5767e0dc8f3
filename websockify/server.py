"""The running server: gevent's WSGI server with our handler, and its lifecycle.

``run(settings)`` opens the listener, starts the wrapped program if any, serves
until a reason to stop arrives (a signal, --run-once, --timeout, --idle-timeout,
the wrapped program's exit), then shuts down in order: stop accepting, Close 1001
to every client, close targets, stop the wrapped program.  It returns the exit
status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket
from gevent.event import AsyncResult
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from websockify import listeners
from websockify.app import WebsockifyApp, WSGIApp, create_app
from websockify.client import peer_name
from websockify.errors import HandshakeError
from websockify.handler import UpgradeHandler, UpgradeServer, UpgradeSettings
from websockify.launcher import WrappedProgram
from websockify.readiness import Readiness
from websockify.settings import Limits, Settings, TcpAddress, UnixAddress
from websockify.tls import ServerTls, log_tls_configuration

logger = logging.getLogger(__name__)

#: Seconds given to open connections to finish their closing handshake on shutdown.
SHUTDOWN_GRACE = 3.0
#: File descriptors kept aside for the listener, logs and the wrapped program.
RESERVED_FDS = 64

#: Signals that stop the server in order.  SIGHUP (the terminal closed, the SSH
#: session ended) too: there is nothing to reload, and a wrapped desktop must not
#: outlive its websockify.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 35\r\nConnection: close\r\n\r\n"
    b"503 Too many connections, try later"
)


class WebsockifyServer(UpgradeServer, WSGIServer):
    """gevent's WSGIServer with the upgrade handler, a connection limit and --run-once.

    ``on_run_once_end`` (with --run-once) is called when the connection of the one
    admitted WebSocket ends, however it ends.
    """

    handler_class = UpgradeHandler
    #: TLS for clients that open with a TLS hello (None: plain clients only).
    tls: ServerTls | None = None

    def __init__(self, listener: socket.socket, app: WSGIApp, settings: Settings,
                 on_run_once_end: Callable[[], None] | None = None) -> None:
        super().__init__(
            listener, app,
            log=LoggingLogAdapter(logging.getLogger("websockify.http"), logging.DEBUG),
            error_log=LoggingLogAdapter(logging.getLogger("websockify.http"), logging.INFO),
        )
        self.upgrade_settings = UpgradeSettings.from_settings(settings)
        self.max_connections = settings.limits.max_connections
        self.handshake_timeout = settings.limits.handshake_timeout
        self.active_connections = 0
        self.last_active = time.monotonic()
        self._run_once = settings.run_once
        self._on_run_once_end = on_run_once_end
        #: The greenlet serving the one WebSocket of --run-once, once admitted.
        self._run_once_owner: gevent.Greenlet | None = None

    def admit_websocket(self, environ: dict[str, Any]) -> None:
        if not self._run_once:
            return
        if self._run_once_owner is not None:
            raise HandshakeError("this server serves a single WebSocket connection "
                                 "(--run-once) and it is taken", status=503)
        self._run_once_owner = gevent.getcurrent()

    def handle(self, sock: socket.socket, address: Any) -> None:
        if self.active_connections >= self.max_connections:
            logger.warning("refusing a connection: --max-connections %d reached",
                           self.max_connections)
            with contextlib.suppress(OSError):
                sock.sendall(_SERVICE_UNAVAILABLE)
            sock.close()
            return
        self.active_connections += 1
        try:
            if self.tls is not None:
                sock = self.tls.accept(sock, peer_name(address), self.handshake_timeout)
                if sock is None:
                    return
            super().handle(sock, address)
        finally:
            self.active_connections -= 1
            self.last_active = time.monotonic()
            if self._run_once_owner is gevent.getcurrent() and self._on_run_once_end:
                self._on_run_once_end()


def run(settings: Settings, readiness: Readiness | None = None) -> int:
    """Serve until told to stop; returns the process exit status.

    ``readiness`` is told once the server listens and when it begins to stop.
    """
    readiness = readiness or Readiness()
    settings = _fit_connection_limit(settings)
    assert settings.listen is not None, "cli gives websockify's own server an address"
    tls = ServerTls(settings.tls) if settings.tls is not None else None
    listener = listeners.open_listener(
        settings.listen, prefer_ipv6=settings.prefer_ipv6, unix_mode=settings.unix_listen_mode,
    )
    unix_file = (listeners.UnixSocketFile.of(settings.listen.path)
                 if isinstance(settings.listen, UnixAddress) else None)
    try:
        return _serve(settings, listener, tls, readiness)
    finally:
        listener.close()
        if unix_file is not None:
            unix_file.remove_if_ours()


def _serve(settings: Settings, listener: socket.socket, tls: ServerTls | None,
           readiness: Readiness) -> int:
    stopped: AsyncResult = AsyncResult()
    program = _start_program(settings, listener, stopped)
    app = create_app(settings, program)
    server = WebsockifyServer(listener, app, settings,
                              on_run_once_end=lambda: stopped.set(0))
    server.tls = tls
    # With TLS, SIGHUP reloads the certificate (there is something to reload);
    # without, it stops the server as SIGTERM does.
    stop_signals = STOP_SIGNALS if tls is None else (signal.SIGTERM, signal.SIGINT)
    for signum in stop_signals:
        if signal.getsignal(signum) == signal.SIG_IGN:
            # Ignored by whoever started us (nohup, a background job): keep it so.
            logger.debug("%s was ignored at start: it stays ignored",
                         signal.Signals(signum).name)
            continue
        gevent.signal_handler(signum, _on_signal, signum, stopped)
    if tls is not None:
        gevent.signal_handler(signal.SIGHUP, tls.reload, "SIGHUP")
    server.start()
    logger.info("listening on %s", listeners.describe(listener))
    log_tls_configuration(settings)
    if settings.target is not None:
        logger.info("relaying WebSocket connections to %s", settings.target)
    watchers = _start_exit_watchers(settings, server, stopped)
    try:
        readiness.ready(listener, listeners.describe(listener))
        status: int = stopped.get()
    finally:
        readiness.stopping()
        for watcher in watchers:
            watcher.kill(block=False)
        _shut_down(server, app, program)
    return status


def _on_signal(signum: int, stopped: AsyncResult) -> None:
    if not stopped.ready():
        logger.info("%s received, shutting down", signal.Signals(signum).name)
        stopped.set(0)


def _shut_down(server: WebsockifyServer, app: WebsockifyApp,
               program: WrappedProgram | None) -> None:
    """Stop accepting, Close 1001 to every client, wait briefly, stop the program."""
    server.close()
    app.close_all(1001, "server shutting down")
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while app.relays and time.monotonic() < deadline:
        gevent.sleep(0.05)
    server.stop(timeout=0.5)  # what is left (idle HTTP keep-alives, stuck relays) is killed
    if program is not None:
        program.stop()


def _start_exit_watchers(settings: Settings, server: WebsockifyServer,
                         stopped: AsyncResult) -> list[gevent.Greenlet]:
    watchers = []
    if settings.timeout:
        watchers.append(gevent.spawn(_stop_after_timeout, settings.timeout, server, stopped))
    if settings.idle_timeout:
        watchers.append(gevent.spawn(_stop_when_idle, settings.idle_timeout, server, stopped))
    return watchers


def _stop_after_timeout(seconds: float, server: WebsockifyServer, stopped: AsyncResult) -> None:
    """--timeout: after ``seconds`` stop accepting; exit once no connection remains."""
    gevent.sleep(seconds)
    logger.info("--timeout %gs reached: no new connections", seconds)
    server.close()
    while server.active_connections:
        gevent.sleep(0.2)
    stopped.set(0)


def _stop_when_idle(seconds: float, server: WebsockifyServer, stopped: AsyncResult) -> None:
    """--idle-timeout: exit after ``seconds`` without any active connection."""
    while True:
        idle_for = time.monotonic() - server.last_active
        if not server.active_connections and idle_for >= seconds:
            logger.info("idle for %gs (--idle-timeout): exiting", seconds)
            stopped.set(0)
            return
        gevent.sleep(min(1.0, max(0.05, seconds - idle_for)))


def _start_program(settings: Settings, listener: socket.socket,
                   stopped: AsyncResult) -> WrappedProgram | None:
    if settings.wrap is None:
        return None
    wrap = settings.wrap
    own_port = listener.getsockname()[1] if isinstance(settings.listen, TcpAddress) else None
    program = WrappedProgram(
        wrap.command, mode=wrap.mode, on_exit=stopped.set, program_port=wrap.program_port,
        unix_target=wrap.unix_target, rebind_path=wrap.rebind_path, listen_port=own_port,
        listen_timeout=settings.limits.connect_timeout,
    )
    program.start()
    return program


def _fit_connection_limit(settings: Settings) -> Settings:
    """Raise the open-files limit as far as allowed; shrink --max-connections to fit it.

    Each connection holds two descriptors (client and target).  Without this a busy
    server would fail in accept() with EMFILE instead of answering 503.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    limits = settings.limits
    fitting = max(1, (soft - RESERVED_FDS) // 2)
    if limits.max_connections > fitting:
        explicit = limits.max_connections != Limits().max_connections
        level = logging.WARNING if explicit else logging.INFO
        logger.log(level, "--max-connections lowered from %d to %d to fit the open-files "
                   "limit %d", limits.max_connections, fitting, soft)
        return dataclasses.replace(
            settings, limits=dataclasses.replace(limits, max_connections=fitting))
    return settings
