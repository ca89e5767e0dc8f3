"""The one exception tree of websockify.

::

    WebsockifyError                 anything websockify raises on purpose
    ├── ConfigError                 a bad command line or setting (exit status 2)
    ├── StartupError                cannot start serving: port in use, … (exit status 3)
    │   └── LauncherError           the wrapped program cannot be started or followed
    ├── ProtocolError               the peer broke the WebSocket protocol
    │   ├── HandshakeError          refused before the upgrade: carries the HTTP status
    │   ├── FrameError              refused after the upgrade: carries the close code
    │   └── ProxyHeaderError        a malformed PROXY protocol header from a front end
    └── TargetError                 the target cannot be reached

Errors of the peer (``ProtocolError``) are answered and logged in one line; anything
outside this tree is our own fault and is logged with a traceback.  Messages of
``ProtocolError`` go on the wire, so they never carry internal details.

The exit statuses of the ``websockify`` command are defined here, in one place.
A wrapped program's own exit status is passed through unchanged (``--wrap-mode
exit``), so a script that must tell them apart should not wrap a program that
exits with 1, 2 or 3.
"""

from __future__ import annotations

#: Stopped on request (SIGTERM, SIGINT, --run-once, --timeout, --idle-timeout).
EXIT_OK = 0
#: Failed after it was serving (an unexpected error while running).
EXIT_RUNTIME_FAILURE = 1
#: The command line is wrong (argparse's convention, and upstream's).
EXIT_USAGE = 2
#: Could not start serving: the port is in use, the address is not ours, the
#: wrapped program cannot be started, a log, port or pid file cannot be written …
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
    """A frame broke the protocol; the connection is closed with ``close_code``.

    Raised inside the codecs only: ``Codec.receive`` turns it into a final
    ``Violation`` event, so the events parsed before it are never lost with it.
    """

    def __init__(self, reason: str, close_code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


class TargetError(WebsockifyError):
    """The target (TCP, unix socket or wrapped program) cannot be reached."""


class ProxyHeaderError(ProtocolError):
    """A PROXY protocol header (v1 or v2) is malformed or truncated."""


class LauncherError(StartupError):
    """The wrapped program cannot be started, or rebind.so cannot be found."""
