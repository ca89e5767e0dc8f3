"""The one exception tree of websockify.

::

    WebsockifyError                 anything websockify raises on purpose
    ├── ConfigError                 a bad command line or setting (exit status 2)
    ├── StartupError                cannot start serving: port in use, … (exit status 3)
    ├── ProtocolError               the peer broke the WebSocket protocol
    │   ├── HandshakeError          refused before the upgrade: carries the HTTP status
    │   └── FrameError              refused after the upgrade: carries the close code
    ├── TargetError                 the target cannot be reached
    └── LauncherError               the wrapped program cannot be started or followed

Errors of the peer (``ProtocolError``) are answered and logged in one line; anything
outside this tree is our own fault and is logged with a traceback.  Messages of
``ProtocolError`` go on the wire, so they never carry internal details.
"""

from __future__ import annotations

#: Could not start serving: the port is in use, the unix socket path is another
#: server's, permission to listen is denied.
EXIT_STARTUP_FAILURE = 3


class WebsockifyError(Exception):
    """Base of every error websockify raises on purpose."""


class ConfigError(WebsockifyError):
    """The command line or the settings are wrong; the user must fix them."""


class StartupError(WebsockifyError):
    """The settings are valid but the server cannot start with them here and now."""


class ProtocolError(WebsockifyError):
    """The peer sent something the protocol forbids."""


class HandshakeError(ProtocolError):
    """The upgrade request is refused with an HTTP status (400, 426 …).

    ``headers`` are extra response headers the peer needs, such as
    ``Sec-WebSocket-Version`` on a version mismatch.
    """

    def __init__(
        self, reason: str, status: int = 400, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers


class FrameError(ProtocolError):
    """A frame broke the protocol; the connection is closed with ``close_code``."""

    def __init__(self, reason: str, close_code: int = 1002, events: list | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code
        #: Events completed before the violation in the same input; the relay still
        #: delivers them, so no byte that preceded a bad frame is lost.
        self.events: list = events if events is not None else []


class TargetError(WebsockifyError):
    """The target (TCP, unix socket or wrapped program) cannot be reached."""


class LauncherError(WebsockifyError):
    """The wrapped program cannot be started, or rebind.so cannot be found."""
