"""One immutable object holding everything the command line decided.

``cli.py`` builds it; the server, the application and the relay only read it.
Keeping it free of behaviour lets the same settings drive the built-in server
and a WSGI deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP host and port; ``host`` "" means every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A unix-domain socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """A listening socket handed to us as a file descriptor (``--inetd``: stdin)."""

    fd: int

    def __str__(self) -> str:
        return f"fd {self.fd}"


Listen = TcpAddress | UnixAddress | InheritedSocket
Target = TcpAddress | UnixAddress

MIB = 1024 * 1024
#: Permissions of a --unix-listen socket: the owner only.
UNIX_LISTEN_MODE = 0o600


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits every connection lives under, each with a default a user would pick."""

    #: Seconds a client has to finish its HTTP request (and the Hixie-76 body).
    handshake_timeout: float = 10.0
    #: Simultaneous client connections (WebSocket and plain HTTP) before 503.
    max_connections: int = 10_000
    #: Largest WebSocket message accepted from a client (close 1009 beyond).
    max_message_size: int = 16 * MIB
    #: Seconds a client waits for its target to accept (and a wrapped program to listen).
    connect_timeout: float = 10.0


class WrapMode(str, Enum):
    """What ``--wrap-mode`` does when the wrapped program's server ends."""

    EXIT = "exit"
    IGNORE = "ignore"
    RESPAWN = "respawn"


@dataclass(frozen=True, slots=True)
class WrapSettings:
    """The program websockify starts and relays to (``-- COMMAND ARGS``).

    ``unix_target``: the program listens on this unix socket (``--unix-target``)
    instead of a TCP port that rebind.so moves.
    """

    command: tuple[str, ...]
    mode: WrapMode = WrapMode.EXIT
    program_port: int | None = None
    rebind_path: str | None = None
    unix_target: str | None = None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS for clients (``wss://``), told apart from plain clients by their first byte.

    Paths are absolute.  ``key`` None means the key is in ``cert``;
    ``min_version`` is upstream's ``--ssl-version`` name ("default", "tlsv1_1" …).
    """

    cert: str
    key: str | None = None
    key_password: str | None = None
    ssl_only: bool = False
    min_version: str = "default"
    ciphers: str | None = None
    verify_client: bool = False
    cafile: str | None = None


@dataclass(frozen=True, slots=True)
class TargetTlsSettings:
    """TLS to the target (``--ssl-target``): verified against ``cafile`` or the system CAs."""

    verify: bool = True
    cafile: str | None = None


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin named on the command line: a class of websockify's module or a dotted path."""

    name: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """Who may connect and where to: token plugin, auth plugin, allowed origins."""

    token_plugin: PluginSpec | None = None
    #: --host-token: the token is the Host header (without its port).
    host_token: bool = False
    auth_plugin: PluginSpec | None = None
    #: --web-auth: the auth plugin also guards --web files.
    web_auth: bool = False
    #: --origin: the Origin header must be one of these (empty: any).
    origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operations:
    """How the process runs and reports, apart from what it serves."""

    #: --port-file: where to write the port (or unix path) once listening.
    port_file: str | None = None
    #: --pid-file: where to write our pid once listening.
    pid_file: str | None = None
    #: -D/--daemon: detach from the terminal before serving.
    daemon: bool = False
    #: --syslog: (host, port) for UDP or a unix datagram socket's path.
    syslog: tuple[str, int] | str | None = None
    #: --legacy-syslog: upstream's RFC 3164 form instead of RFC 5424.
    legacy_syslog: bool = False
    #: --log-format: "text" or "json".
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one websockify process needs to run.

    ``listen`` is None when a WSGI server (gunicorn) listens instead of ours.
    """

    listen: Listen | None
    target: Target | None
    wrap: WrapSettings | None = None
    unix_listen_mode: int = UNIX_LISTEN_MODE
    prefer_ipv6: bool = False
    web: Path | None = None
    file_only: bool = False
    heartbeat: float = 0.0
    run_once: bool = False
    timeout: float = 0.0
    idle_timeout: float = 0.0
    allow_hixie: bool = True
    verbose: bool = False
    log_file: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: None: plain clients only.
    tls: TlsSettings | None = None
    #: None: the target speaks plain TCP.
    target_tls: TargetTlsSettings | None = None
    access: AccessSettings = field(default_factory=AccessSettings)
    operations: Operations = field(default_factory=Operations)
