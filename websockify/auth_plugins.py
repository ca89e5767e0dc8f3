"""Auth plugins: whether a connection may go ahead (upstream's module and names).

``--auth-plugin NAME --auth-source ARG`` builds ``NAME(ARG)`` once at start-up.
Before answering a WebSocket upgrade (and, with ``--web-auth``, before serving a
file) the server calls ``authenticate(headers, target_host, target_port)``; the
plugin returns to allow, or raises :class:`AuthenticationError` (or its
:class:`InvalidOriginError`), whose ``code``, ``headers`` and ``msg`` make the
HTTP answer.  ``headers`` is an ``http.client.HTTPMessage``, as with upstream: names are looked
up without regard to case and a missing header is None.

The server puts the verified client certificate's common name in
``SSL_CLIENT_S_DN_CN`` (Apache's name), after removing every header whose name
begins with ``SSL`` in any case, so a client cannot forge it.

Imports nothing beyond the standard library: nova and other programs load this
module under eventlet or plain threads.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from email.message import Message
from typing import Any

#: What ``authenticate`` receives: the server passes an ``http.client.HTTPMessage``
#: (as upstream does); tests and other callers may pass a plain dict.
Headers = Message | Mapping[str, str]


class BasePlugin:
    """An auth plugin: built with its ``--auth-source``; ``authenticate`` raises to refuse."""

    def __init__(self, src: str | None = None) -> None:
        self.source = src

    def authenticate(self, headers: Headers, target_host: Any,
                     target_port: Any) -> None:
        pass


class AuthenticationError(Exception):
    """Refuses the connection with HTTP ``response_code`` and ``response_headers``."""

    def __init__(self, log_msg: str | None = None, response_code: int = 403,
                 response_headers: Headers | None = None,
                 response_msg: str | None = None) -> None:
        self.code = response_code
        self.headers = dict(response_headers or {})
        self.msg = response_msg
        super().__init__(f"{self.code} {log_msg if log_msg is not None else response_msg}")


class InvalidOriginError(AuthenticationError):
    """The Origin header is not one of those allowed (403)."""

    def __init__(self, expected: Any, actual: str | None) -> None:
        self.expected_origin = expected
        self.actual_origin = actual
        super().__init__(response_msg="Invalid Origin",
                         log_msg=f"Invalid Origin Header: expected one of {expected}, "
                                 f"got {actual!r}")


class BasicHTTPAuth(BasePlugin):
    """HTTP Basic authentication against ``user:password`` (the ``--auth-source``).

    No credentials or wrong ones: 401 with a ``WWW-Authenticate`` challenge; a
    header that is not Basic or not decodable: 403.  The comparison takes the same
    time wherever the first difference lies.
    """

    realm = "Websockify"

    def __init__(self, src: str | None = None) -> None:
        if not src or ":" not in src:
            raise ValueError("BasicHTTPAuth needs --auth-source user:password")
        super().__init__(src)
        self.src = src
        self._expected = src.encode("latin-1", "replace")

    def authenticate(self, headers: Headers, target_host: Any,
                     target_port: Any) -> None:
        header = headers.get("Authorization")
        if not header:
            self.demand_auth()
            return
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            self.auth_error()
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            self.auth_error()
        if b":" not in credentials:
            self.auth_error()
        username, _, password = credentials.decode("latin-1").partition(":")
        if not self.validate_creds(username, password):
            self.demand_auth()

    def validate_creds(self, username: str, password: str) -> bool:
        given = f"{username}:{password}".encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)

    def auth_error(self) -> None:
        raise AuthenticationError(response_code=403, response_msg="Forbidden",
                                  log_msg="malformed Authorization header")

    def demand_auth(self) -> None:
        raise AuthenticationError(
            response_code=401, response_msg="Unauthorized",
            log_msg="missing or wrong credentials",
            response_headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'})


class ExpectOrigin(BasePlugin):
    """The Origin header must be one of the space-separated ``--auth-source`` origins."""

    def __init__(self, src: str | None = None) -> None:
        super().__init__(src)
        self.source: list[str] = src.split() if src else []  # type: ignore[assignment]

    def authenticate(self, headers: Headers, target_host: Any,
                     target_port: Any) -> None:
        origin = headers.get("Origin")
        if origin is None or origin not in self.source:
            raise InvalidOriginError(expected=self.source, actual=origin)


class ClientCertCNAuth(BasePlugin):
    """The verified client certificate's common name must be one of the
    space-separated ``--auth-source`` names (use with ``--verify-client``)."""

    def __init__(self, src: str | None = None) -> None:
        super().__init__(src)
        self.source: list[str] = src.split() if src else []  # type: ignore[assignment]

    def authenticate(self, headers: Headers, target_host: Any,
                     target_port: Any) -> None:
        common_name = headers.get("SSL_CLIENT_S_DN_CN")
        if common_name is None or common_name not in self.source:
            raise AuthenticationError(response_code=403, response_msg="Forbidden",
                                      log_msg=f"client certificate CN {common_name!r} "
                                              "not allowed")
