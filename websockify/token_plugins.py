"""Token plugins: which target a connection's token stands for (upstream's module and names).

``--token-plugin NAME --token-source ARG`` builds ``NAME(ARG)`` once at start-up;
for each connection the server calls ``lookup(token)``, which returns
``[host, port]``, ``["unix_socket", path]`` for a unix-socket target, or None
for an unknown token.  A plugin written for upstream websockify (a subclass of
:class:`BasePlugin` with ``lookup``) works unchanged when named by its dotted
path.

This module imports neither gevent nor any optional library at import time:
programs such as OpenStack nova import it under eventlet or plain threads.  The
gevent server runs ``lookup`` in gevent's thread pool, so a lookup may run in
several threads at once; the plugins here are safe for that, and every network
call has a timeout.  Optional libraries are imported when a plugin is built, with
an error naming the extra to install.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a network lookup (HTTP, Redis) may take before it fails.
LOOKUP_TIMEOUT = 10.0

#: The host a lookup returns for a unix-socket target (upstream's convention).
UNIX_SOCKET = "unix_socket"

# A field is a quoted string (colons allowed inside) or the run up to the next colon.
_SOURCE_FIELD = re.compile(r'"([^"]+)"(?=:|$)|([^:]*)')


def parse_source_args(src: str) -> list[str]:
    """``src.split(":")``, except that a field in double quotes may hold colons.

    ``a:"b:c":d`` gives ``["a", "b:c", "d"]`` (upstream's helper, same results).
    """
    fields = []
    position = 0
    while True:
        match = _SOURCE_FIELD.match(src, position)
        assert match is not None  # the pattern also matches the empty string
        fields.append(match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
        if position >= len(src) or src[position] != ":":
            return fields
        position += 1


def split_host_port(text: str) -> list[str]:
    """``host:port`` or ``[v6]:port`` as ``[host, port]`` (brackets removed)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"expected host:port, got {text.strip()!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return [host, port]


def _need(module: str, extra: str, plugin: str) -> Any:
    """Import an optional library, or fail with the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(f"{plugin} needs the {module.split('.')[0]} package: "
                          f"pip install websockify[{extra}]") from None


class BasePlugin:
    """A token plugin: built with its ``--token-source``, asked with ``lookup(token)``."""

    def __init__(self, src: str | None) -> None:
        self.source = src

    def lookup(self, token: str) -> Any:
        return None


def _require_source(src: str | None, what: str) -> str:
    if not src:
        raise ValueError(f"--token-source is required: {what}")
    return src


class ReadOnlyTokenFile(BasePlugin):
    """Tokens from a file, or a directory of files, read once at the first lookup.

    Lines are ``token: host:port``, ``token: [v6]:port`` or
    ``token: unix_socket:/path``; ``#`` starts a comment line.
    """

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(src, "a token file or a directory of them"))
        self._path = Path(self.source)  # type: ignore[arg-type]
        if not self._path.exists():
            raise ValueError(f"{self.source}: no such file or directory")
        self._targets: dict[str, list[str]] | None = None
        self._lock = threading.Lock()

    def _files(self) -> list[Path]:
        if self._path.is_dir():
            # In name order, so that a token defined twice resolves the same way each time.
            return sorted((path for path in self._path.iterdir() if path.is_file()), key=str)
        return [self._path]

    def _load_targets(self) -> None:
        targets: dict[str, list[str]] = {}
        for path in self._files():
            try:
                with path.open(encoding="utf-8", errors="replace") as file:
                    lines = file.readlines()
            except OSError as error:
                logger.error("token file %s: %s", path, error.strerror or error)
                continue
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    token, target = _parse_token_line(line)
                except ValueError as error:
                    logger.error("token file %s line %d: %s", path, number, error)
                    continue
                targets[token] = target
        self._targets = targets

    def lookup(self, token: str) -> list[str] | None:
        with self._lock:
            if self._targets is None:
                self._load_targets()
            assert self._targets is not None
            target = self._targets.get(token)
        return list(target) if target is not None else None


def _parse_token_line(line: str) -> tuple[str, list[str]]:
    match = re.match(r"(.*?):\s+(.*)$", line)
    if not match or not match.group(1):
        raise ValueError(f"expected 'token: host:port', got {line!r}")
    token, target = match.group(1), match.group(2).strip()
    if target.startswith(UNIX_SOCKET + ":"):
        return token, [UNIX_SOCKET, target[len(UNIX_SOCKET) + 1:]]
    return token, split_host_port(target)


class TokenFile(ReadOnlyTokenFile):
    """Like ReadOnlyTokenFile, but picks up edits: the files are read again when they
    change (their names, sizes or modification times), and only then."""

    def __init__(self, src: str | None) -> None:
        super().__init__(src)
        self._signature: tuple[Any, ...] | None = None

    def _files_signature(self) -> tuple[Any, ...]:
        entries = []
        for path in [self._path, *self._files()]:
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(entries)

    def lookup(self, token: str) -> list[str] | None:
        with self._lock:
            signature = self._files_signature()
            if signature != self._signature:
                self._load_targets()
                self._signature = signature
        return super().lookup(token)


class TokenFileName(BasePlugin):
    """A directory where each file is named after a token and holds ``host:port``."""

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(src, "a directory"))
        if not Path(self.source).is_dir():  # type: ignore[arg-type]
            raise ValueError(f"{src}: TokenFileName needs a directory")

    def lookup(self, token: str) -> list[str] | None:
        name = Path(token).name
        if not name or name in (".", ".."):
            return None
        path = Path(self.source) / name  # type: ignore[arg-type]
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if text.startswith(UNIX_SOCKET + ":"):
            return [UNIX_SOCKET, text[len(UNIX_SOCKET) + 1:]]
        return split_host_port(text)


class BaseTokenAPI(BasePlugin):
    """An HTTP API: GET the ``--token-source`` URL with the token put in place of ``%s``.

    A 2xx answer's body is ``host:port``; any other status means an unknown token.
    Subclasses change ``process_result(response)`` (a ``requests`` response).
    """

    #: Seconds the API may take to answer.
    timeout = LOOKUP_TIMEOUT

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(src, "a URL with %s where the token goes"))
        try:
            if "%s" not in self.source or self.source % "token" == self.source:  # type: ignore
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{src}: the URL needs one %s where the token goes "
                             "(write a literal % as %%)") from None
        self._requests = _need("requests", "tokenapi", type(self).__name__)
        self._session = self._requests.Session()

    def process_result(self, resp: Any) -> Any:
        return split_host_port(resp.text)

    def lookup(self, token: str) -> Any:
        from urllib.parse import quote

        url = self.source % quote(token, safe="")  # type: ignore[operator]
        resp = self._session.get(url, timeout=self.timeout)
        if not resp.ok:
            return None
        return self.process_result(resp)


class JSONTokenApi(BaseTokenAPI):
    """An HTTP API answering JSON ``{"host": ..., "port": ...}``."""

    def process_result(self, resp: Any) -> Any:
        answer = resp.json()
        return [answer["host"], answer["port"]]


class JWTTokenApi(BasePlugin):
    """The token is a JWT carrying ``host`` and ``port`` claims.

    Signed (JWS) or encrypted (JWE, then signed inside) with the key in the
    ``--token-source`` file: a PEM key (RSA/EC, public for JWS) or, for HMAC, the
    shared secret written in base64url (upstream's format).  ``exp`` and ``nbf``
    are enforced.  The key file is read again when it changes.
    """

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(src, "a key file"))
        self._jwt = _need("jwcrypto.jwt", "jwt", "JWTTokenApi")
        self._jwk = _need("jwcrypto.jwk", "jwt", "JWTTokenApi")
        self._lock = threading.Lock()
        self._key: Any = None
        self._key_signature: tuple[int, int, int] | None = None
        self._current_key()

    def _current_key(self) -> Any:
        path = self.source
        with self._lock:
            try:
                st = os.stat(path)  # type: ignore[arg-type]
            except OSError as error:
                raise ValueError(f"JWT key file {path}: {error.strerror or error}") from None
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if signature != self._key_signature:
                self._key = self._load_key(Path(path).read_bytes())  # type: ignore[arg-type]
                self._key_signature = signature
            return self._key

    def _load_key(self, data: bytes) -> Any:
        """A PEM key, or else (as upstream) the file's text as a base64url HMAC secret."""
        jwk = self._jwk
        try:
            return jwk.JWK.from_pem(data)
        except Exception:
            pass
        secret = data.strip().decode("ascii", "replace")
        if not secret:
            raise ValueError(f"JWT key file {self.source} is empty")
        return jwk.JWK(kty="oct", k=secret)

    def lookup(self, token: str) -> list[Any] | None:
        try:
            key = self._current_key()
            claims = self._claims(token, key)
        except ValueError as error:
            logger.warning("JWT token refused: %s", error)
            return None
        if not isinstance(claims, dict):
            logger.warning("JWT token refused: its claims are not an object")
            return None
        problem = _time_problem(claims, time.time())
        if problem:
            logger.warning("JWT token refused: %s", problem)
            return None
        if "host" not in claims or "port" not in claims:
            logger.warning("JWT token refused: no host and port claims")
            return None
        return [claims["host"], claims["port"]]

    def _claims(self, token: str, key: Any) -> Any:
        jwt = self._jwt
        try:
            outer = jwt.JWT(jwt=token, key=key, check_claims=False,
                            expected_type=_jwt_type(token))
            if _jwt_type(token) == "JWE":
                inner_text = outer.claims
                outer = jwt.JWT(jwt=inner_text, key=key, check_claims=False,
                                expected_type=_jwt_type(inner_text))
            return json.loads(outer.claims)
        except Exception as error:
            raise ValueError(f"cannot verify it: {type(error).__name__}: {error}") from None


def _jwt_type(token: str) -> str:
    """JWS compact tokens have 3 dot-separated parts, JWE ones 5."""
    return "JWE" if token.count(".") == 4 else "JWS"


def _time_problem(claims: dict[str, Any], now: float) -> str | None:
    """Why the ``nbf``/``exp`` claims make the token unusable at ``now``, if they do."""
    for name in ("nbf", "exp"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return f"its {name} claim is not a number"
    if "nbf" in claims and now < claims["nbf"]:
        return f"not valid before {claims['nbf']}"
    if "exp" in claims and now >= claims["exp"]:
        return f"expired at {claims['exp']}"
    return None


class TokenRedis(BasePlugin):
    """Tokens in Redis.  Source ``host[:port[:db[:password[:namespace]]]]``.

    Empty fields take their defaults (port 6379, db 0, no password, no
    namespace); a field in double quotes may contain colons.  With a namespace
    the key is ``namespace:token``.  A value is JSON ``{"host": "host:port"}`` or
    plain ``host:port``.
    """

    #: Seconds Redis may take to connect or answer.
    timeout = LOOKUP_TIMEOUT

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(
            src, "host[:port[:db[:password[:namespace]]]] of the Redis server"))
        redis = _need("redis", "redis", "TokenRedis")
        fields = parse_source_args(self.source)  # type: ignore[arg-type]
        if len(fields) > 5 or not fields[0]:
            raise ValueError(f"--token-source {src!r}: expected "
                             "host[:port[:db[:password[:namespace]]]]")
        fields += [""] * (5 - len(fields))
        server, port, db, password, namespace = fields
        try:
            self._port = int(port) if port else 6379
            self._db = int(db) if db else 0
        except ValueError:
            raise ValueError(f"--token-source {src!r}: the port and db must be numbers") from None
        self._server = server
        self._password = password or None
        self._namespace = f"{namespace}:" if namespace else ""
        retry = _need("redis.retry", "redis", "TokenRedis").Retry
        no_backoff = _need("redis.backoff", "redis", "TokenRedis").NoBackoff
        self._client = redis.Redis(
            host=self._server, port=self._port, db=self._db, password=self._password,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            # One immediate retry replaces a pooled connection that Redis dropped;
            # redis-py's default backs off for seconds while the client waits.
            retry=retry(no_backoff(), 1))
        logger.info("TokenRedis: tokens from redis %s:%s db %s", self._server, self._port,
                    self._db)

    def lookup(self, token: str) -> list[str] | None:
        value = self._client.get(self._namespace + token)
        if value is None:
            return None
        text = value.decode("utf-8", "replace").strip()
        try:
            if text.startswith("{"):
                return split_host_port(json.loads(text)["host"])
            return split_host_port(text)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.error("TokenRedis: the value of token key %r is neither "
                         "{\"host\": \"host:port\"} nor host:port", self._namespace + token)
            return None


class UnixDomainSocketDirectory(BasePlugin):
    """The token names a unix socket inside the ``--token-source`` directory.

    A token never reaches outside the directory: ``..``, absolute paths and
    symbolic links that lead elsewhere are refused.
    """

    def __init__(self, src: str | None) -> None:
        super().__init__(_require_source(src, "a directory of unix sockets"))
        self._dir_path = Path(self.source).resolve()  # type: ignore[arg-type]
        if not self._dir_path.is_dir():
            raise ValueError(f"{src}: UnixDomainSocketDirectory needs a directory")

    def lookup(self, token: str) -> list[str] | None:
        if not token or "\0" in token:
            return None
        try:
            path = (self._dir_path / token).resolve()
            if not path.is_relative_to(self._dir_path) or path == self._dir_path:
                logger.warning("UnixDomainSocketDirectory: token %r leads outside %s",
                               token, self._dir_path)
                return None
            if not stat.S_ISSOCK(path.stat().st_mode):
                return None
        except OSError:
            return None
        return [UNIX_SOCKET, str(path)]
