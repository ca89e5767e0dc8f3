"""Who may connect, and to which target: decided before the upgrade is answered.

For each WebSocket upgrade, in this order (upstream's):

1. ``--origin``: the Origin header must be one of the allowed origins (403).
2. The token plugin turns the connection's token into its target (400 without a
   token, 403 for a token it does not know, 503 when it fails or times out).
3. The auth plugin may refuse with its own status and headers (401, 403 …).

The chosen target goes into the request's ``environ`` (``websockify.target``),
so it lives with the connection, never on the shared server.  Refusals are
:class:`~websockify.errors.HandshakeError`, answered over HTTP and logged with
the client address by the handler.

The plugins (``websockify.token_plugins``, ``websockify.auth_plugins`` or any
dotted path) are plain blocking code that must not depend on gevent: each call
runs in gevent's thread pool, bounded by ``--connect-timeout``.  A slow Redis, an
HTTP API or a user plugin doing I/O with a C library therefore never stalls the
other connections, and nothing has to be monkey-patched.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import logging
from collections.abc import Callable, Mapping
from http import cookies
from typing import Any, TypeVar
from urllib.parse import parse_qs

import gevent

from websockify.auth_plugins import AuthenticationError
from websockify.errors import ConfigError, HandshakeError
from websockify.settings import AccessSettings, PluginSpec, Target, TcpAddress, UnixAddress
from websockify.token_plugins import UNIX_SOCKET

logger = logging.getLogger(__name__)

#: Where the target chosen for a request is kept in its environ.
TARGET_KEY = "websockify.target"
#: The environ key (Apache's name) that carries the verified client certificate's CN.
CLIENT_CN_KEY = "SSL_CLIENT_S_DN_CN"
#: Threads that may run plugin calls at once (beyond them, calls queue).
PLUGIN_THREADS = 32

T = TypeVar("T")


def load_plugin(spec: PluginSpec, default_module: str, option: str) -> Any:
    """``spec.name`` (a class of ``default_module`` or a dotted path) built with its source.

    Raises ConfigError naming the plugin for an import error, a missing class, a
    missing library or a wrong source.
    """
    module_name, _, class_name = spec.name.rpartition(".")
    module_name = module_name or default_module
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{option} {spec.name}: cannot import {module_name}: {error}") from None
    plugin_class = getattr(module, class_name, None)
    if not callable(plugin_class):
        raise ConfigError(f"{option} {spec.name}: {module_name} has no plugin {class_name!r}")
    try:
        return plugin_class(spec.source)
    except Exception as error:
        raise ConfigError(f"{option} {spec.name}: {error}") from None


def plugin_headers(environ: Mapping[str, Any]) -> http.client.HTTPMessage:
    """Request headers as auth plugins see them: upstream's own type, an HTTPMessage.

    Names are looked up in any case (``-`` and ``_`` are the same in a WSGI
    environ) and a missing header is None, as plugins written for upstream expect.
    Headers whose names start with ``SSL`` come from the server only: the client's
    are dropped, so a client cannot claim a certificate's name.
    """
    headers = http.client.HTTPMessage()
    for key, value in environ.items():
        if key.startswith("HTTP_") and not key.startswith("HTTP_SSL"):
            headers[key[5:].replace("_", "-").title()] = value
    common_name = environ.get(CLIENT_CN_KEY)
    if common_name is not None:
        headers[CLIENT_CN_KEY] = common_name
    return headers


def token_of(environ: Mapping[str, Any], host_token: bool) -> str | None:
    """The connection's token.

    With --host-token the Host header without its port.  Otherwise the first of:
    the ``token`` query parameter (upstream's place), a ``token`` cookie, the last
    segment of the path (``/websockify/TOKEN``).
    """
    if host_token:
        host = str(environ.get("HTTP_HOST", "")).strip()
        host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
        return host or None
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    if query.get("token"):
        return query["token"][0].rstrip("\n")
    jar: cookies.SimpleCookie = cookies.SimpleCookie()
    with contextlib.suppress(cookies.CookieError):
        jar.load(str(environ.get("HTTP_COOKIE", "")))
    if "token" in jar and jar["token"].value:
        return jar["token"].value
    last_segment = str(environ.get("PATH_INFO", "")).rstrip("/").rpartition("/")[2]
    return last_segment or None


def target_of(result: Any) -> Target:
    """A token plugin's answer as a target: ``[host, port]`` or ``["unix_socket", path]``."""
    try:
        host, port = result
    except (TypeError, ValueError):
        raise ValueError(f"expected [host, port], got {result!r:.100}") from None
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(port, bytes):
        port = port.decode()
    if host == UNIX_SOCKET:
        return UnixAddress(str(port))
    port_number = int(str(port).strip())
    if not 0 < port_number < 65536 or not host:
        raise ValueError(f"expected [host, port], got {result!r:.100}")
    return TcpAddress(str(host).strip("[]"), port_number)


class Access:
    """The checks and the token lookup that every upgrade goes through."""

    def __init__(self, settings: AccessSettings, fixed_target: Target | None,
                 timeout: float) -> None:
        self._settings = settings
        self._fixed_target = fixed_target
        self._timeout = timeout
        self.token_plugin = None
        self.auth_plugin = None
        if settings.token_plugin is not None:
            self.token_plugin = load_plugin(settings.token_plugin, "websockify.token_plugins",
                                            "--token-plugin")
        if settings.auth_plugin is not None:
            self.auth_plugin = load_plugin(settings.auth_plugin, "websockify.auth_plugins",
                                           "--auth-plugin")
        if self.token_plugin is not None or self.auth_plugin is not None:
            pool = gevent.get_hub().threadpool
            pool.maxsize = max(pool.maxsize, PLUGIN_THREADS)

    @property
    def active(self) -> bool:
        """Whether any check applies (without one, admit() is a no-op)."""
        return bool(self.token_plugin or self.auth_plugin or self._settings.origins)

    def admit(self, environ: dict[str, Any]) -> None:
        """Check an upgrade request; put its target in ``environ``; raise HandshakeError."""
        self._check_origin(environ)
        target = self._fixed_target
        if self.token_plugin is not None:
            target = self._lookup_target(environ)
            environ[TARGET_KEY] = target
        if self.auth_plugin is not None:
            self._authenticate(environ, target)

    def admit_web(self, environ: dict[str, Any]) -> None:
        """--web-auth: the auth plugin also guards static files (--origin does not)."""
        if self._settings.web_auth and self.auth_plugin is not None:
            self._authenticate(environ, self._fixed_target)

    def _check_origin(self, environ: Mapping[str, Any]) -> None:
        allowed = self._settings.origins
        if not allowed:
            return
        origin = environ.get("HTTP_ORIGIN") or environ.get("HTTP_SEC_WEBSOCKET_ORIGIN")
        if origin not in allowed:
            raise HandshakeError(f"origin {origin!r} is not allowed", status=403)

    def _lookup_target(self, environ: Mapping[str, Any]) -> Target:
        token = token_of(environ, self._settings.host_token)
        if token is None:
            raise HandshakeError("a token is required (?token=, a token cookie or the path)")
        plugin = self.token_plugin
        assert plugin is not None
        name = type(plugin).__name__
        result = self._call(plugin.lookup, token, what=f"token plugin {name}")
        if result is None:
            logger.debug("token plugin %s does not know token %r", name, token)
            raise HandshakeError("unknown token", status=403)
        try:
            return target_of(result)
        except ValueError as error:
            logger.error("token plugin %s gave an unusable target: %s", name, error)
            raise HandshakeError("the token's target is unusable", status=502) from None

    def _authenticate(self, environ: Mapping[str, Any], target: Target | None) -> None:
        plugin = self.auth_plugin
        assert plugin is not None
        host: Any = None
        port: Any = None
        if isinstance(target, TcpAddress):
            host, port = target.host, target.port
        elif isinstance(target, UnixAddress):
            host, port = UNIX_SOCKET, target.path
        headers = plugin_headers(environ)
        try:
            self._call(plugin.authenticate, headers, host, port,
                       what=f"auth plugin {type(plugin).__name__}")
        except AuthenticationError as error:
            reason = error.msg or _reason(error.code)
            logger.debug("auth plugin %s refused: %s", type(plugin).__name__, error)
            raise HandshakeError(reason, status=error.code,
                                 headers=tuple(error.headers.items())) from None

    def _call(self, function: Callable[..., T], *args: Any, what: str) -> T:
        """Run a plugin call in a thread, within the timeout; failures become 503."""
        pool = gevent.get_hub().threadpool
        try:
            result: T = pool.spawn(function, *args).get(timeout=self._timeout)
        except (AuthenticationError, HandshakeError):
            raise
        except gevent.Timeout:
            logger.warning("%s did not answer within %gs", what, self._timeout)
            raise HandshakeError(f"{what.split()[0]} lookup timed out", status=503) from None
        except Exception as error:
            logger.warning("%s failed: %s: %s", what, type(error).__name__, error)
            raise HandshakeError(f"{what.split()[0]} lookup failed", status=503) from None
        return result


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"
