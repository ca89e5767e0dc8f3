"""The command line, compatible with upstream websockify's, turned into Settings.

Nothing else in websockify reads ``sys.argv``.  Option names and positional forms
are upstream's (people have them in scripts and systemd units); options we do not
implement are absent rather than silently ignored.  A wrong command line gets one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from websockify import __version__, daemon, logsetup, syslog, systemd
from websockify.errors import (
    EXIT_RUNTIME_FAILURE,
    EXIT_STARTUP_FAILURE,
    EXIT_USAGE,
    ConfigError,
    StartupError,
    WebsockifyError,
)
from websockify.readiness import Readiness
from websockify.settings import (
    MIB,
    UNIX_LISTEN_MODE,
    AccessSettings,
    InheritedSocket,
    Limits,
    Listen,
    Operations,
    PluginSpec,
    Settings,
    Target,
    TargetTlsSettings,
    TcpAddress,
    TlsSettings,
    UnixAddress,
    WrapMode,
    WrapSettings,
)

logger = logging.getLogger("websockify")

USAGE = """
    websockify [options] [source_addr:]source_port target_addr:target_port
    websockify [options] --token-plugin=CLASS [source_addr:]source_port
    websockify [options] --unix-target=FILE [source_addr:]source_port
    websockify [options] [source_addr:]source_port -- WRAP_COMMAND_LINE"""

#: upstream's --cert default: used when present, plain-only service when absent.
DEFAULT_CERT = "self.pem"
SSL_VERSIONS = ("default", "tlsv1_1", "tlsv1_2", "tlsv1_3")
#: Where a WSGI deployment (the application and our gunicorn worker) finds its arguments.
WSGI_ARGS_ENV = "WEBSOCKIFY_ARGS"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a ConfigError: one line, not the usage text."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="websockify", usage=USAGE,
                     description="Relay WebSocket clients to a TCP or unix-socket target.")
    add = parser.add_argument
    add("--version", action="version", version=f"websockify {__version__}")
    add("-v", "--verbose", action="store_true", help="verbose messages")
    add("--log-file", metavar="FILE", help="also write the log to FILE")
    add("--run-once", action="store_true", help="handle a single WebSocket connection and exit")
    add("--timeout", type=_seconds, default=0.0, metavar="SECONDS",
        help="after SECONDS stop accepting and exit when no connection is left")
    add("--idle-timeout", type=_seconds, default=0.0, metavar="SECONDS",
        help="exit after SECONDS without any active connection")
    add("--heartbeat", type=_seconds, default=0.0, metavar="INTERVAL",
        help="ping clients every INTERVAL seconds; close those that don't answer")
    add("--unix-listen", metavar="FILE", help="listen on a unix socket instead of a port")
    add("--unix-listen-mode", type=_octal_mode, metavar="MODE",
        help=f"permissions of the --unix-listen socket, octal (default {UNIX_LISTEN_MODE:o})")
    add("--unix-target", metavar="FILE", help="relay to a unix socket")
    add("--inetd", action="store_true",
        help="inetd mode: the listening socket is passed as standard input")
    add("-6", "--prefer-ipv6", action="store_true", help="prefer IPv6 when resolving source_addr")
    add("--web", metavar="DIR", help="serve static files from DIR on the same port")
    add("--file-only", action="store_true", help="no directory listings for --web")
    add("--no-hixie", action="store_true",
        help="refuse the Hixie-75/76 WebSocket drafts (RFC 6455 only)")
    limits = Limits()
    add("--handshake-timeout", type=_positive_seconds, default=limits.handshake_timeout,
        metavar="SECONDS", help="drop clients that take longer to send their whole "
        "request, body included"
        f" (default {limits.handshake_timeout:g})")
    add("--max-connections", type=_positive_int, default=limits.max_connections, metavar="N",
        help=f"answer 503 beyond N simultaneous connections (default {limits.max_connections})")
    add("--max-message-size", type=_positive_int, default=limits.max_message_size,
        metavar="BYTES", help="close with 1009 on larger client messages "
        f"(default {limits.max_message_size // MIB} MiB)")
    add("--connect-timeout", type=_positive_seconds, default=limits.connect_timeout,
        metavar="SECONDS",
        help="how long a client waits for its target (and a wrapped program) "
        f"(default {limits.connect_timeout:g})")
    add("--wrap-mode", choices=[mode.value for mode in WrapMode], default=WrapMode.EXIT.value,
        help="when the wrapped program exits: exit (default), ignore, respawn")
    add("--wrap-port", type=_port, metavar="PORT",
        help="the wrapped program's port to relay to (default: its first listener)")
    add("--rebind", metavar="FILE", help="rebind.so to preload into the wrapped program")
    _add_tls_options(add)
    _add_access_options(add)
    _add_operations_options(parser)
    add("addresses", nargs="*", help=argparse.SUPPRESS)
    return parser


def _add_tls_options(add: Callable[..., object]) -> None:
    add("--cert", metavar="FILE", help="TLS certificate (and key) in PEM for wss:// clients; "
        f"default {DEFAULT_CERT}, and without that file only plain clients are served")
    add("--key", metavar="FILE", help="the TLS key, if not in the --cert file")
    add("--key-password", metavar="PASSWORD", help="password of an encrypted --key")
    add("--ssl-only", action="store_true", help="refuse clients that do not speak TLS")
    add("--ssl-version", choices=SSL_VERSIONS, default="default",
        help="lowest TLS version accepted: " + ", ".join(SSL_VERSIONS))
    add("--ssl-ciphers", metavar="CIPHERS", help="OpenSSL cipher list for TLS 1.2 and older")
    add("--verify-client", action="store_true",
        help="TLS clients must present a certificate signed by --cafile (or a system CA)")
    add("--cafile", metavar="FILE", help="CA certificates that sign client certificates "
        "(for --verify-client)")
    add("--ssl-target", action="store_true", help="connect to the target with TLS, "
        "verifying its certificate and host name")
    add("--ssl-target-cafile", metavar="FILE",
        help="CA certificates for the target's certificate (default: the system's)")
    add("--ssl-target-no-verify", action="store_true",
        help="accept any target certificate (e.g. a self-signed VNC server)")


def _add_access_options(add: Callable[..., object]) -> None:
    add("--token-plugin", metavar="CLASS", help="choose each connection's target by its token: "
        "a class of websockify.token_plugins (TokenFile, TokenRedis …) or a dotted path")
    add("--token-source", metavar="ARG", help="the argument the token plugin is built with")
    add("--host-token", action="store_true",
        help="the token is the Host header, not the token query parameter")
    add("--target-config", metavar="FILE",
        help="deprecated: same as --token-plugin TokenFile --token-source FILE")
    add("--auth-plugin", metavar="CLASS", help="decide who may connect: a class of "
        "websockify.auth_plugins (BasicHTTPAuth, ExpectOrigin, ClientCertCNAuth) or a dotted path")
    add("--auth-source", metavar="ARG", help="the argument the auth plugin is built with")
    add("--web-auth", action="store_true", help="the auth plugin also guards --web files")
    add("--origin", action="append", default=[], metavar="ORIGIN",
        help="only accept WebSocket clients whose Origin is ORIGIN (repeat, or separate "
        "several with spaces), e.g. https://example.com")


def _add_operations_options(parser: argparse.ArgumentParser) -> None:
    """How the process starts, runs and reports (systemd, CI, daemons, logs)."""
    add = parser.add_argument
    add("--socket-activation", action="store_true",
        help="listen on the socket systemd passes (LISTEN_FDS), instead of source_port")
    add("--port-file", metavar="FILE",
        help="once listening, write the port (or unix socket path) to FILE")
    add("-D", "--daemon", action="store_true",
        help="run in the background; the command returns once it listens")
    add("--pid-file", metavar="FILE", help="once listening, write the process id to FILE")
    add("--syslog", metavar="SERVER",
        help="also log to syslog: a UDP host:port or a local socket such as /dev/log")
    add("--legacy-syslog", action="store_true",
        help="with --syslog: upstream's older message form (RFC 3164) instead of RFC 5424")
    add("--log-format", choices=logsetup.LOG_FORMATS, default="text",
        help="text (default) or json: one JSON object per line")


def parse(argv: Sequence[str], *, for_wsgi: bool = False) -> Settings:
    """Settings from a command line (without the program name); raises ConfigError.

    ``for_wsgi``: the arguments of an application that a WSGI server (gunicorn)
    runs, so no listening address and none of the options of our own server.
    """
    argv = list(argv)
    wrap_command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, wrap_command = argv[:split], argv[split + 1:]
    opts = build_parser().parse_args(argv)
    if for_wsgi:
        _refuse_server_options(opts, wrap_command)
    return _settings(opts, wrap_command, for_wsgi)


def parse_wsgi_environment() -> Settings:
    """Settings from $WEBSOCKIFY_ARGS, for a WSGI deployment; raises ConfigError."""
    args = os.environ.get(WSGI_ARGS_ENV)
    if not args:
        raise ConfigError(f"set {WSGI_ARGS_ENV} to websockify's arguments, e.g. "
                          f"{WSGI_ARGS_ENV}='localhost:5900'")
    return parse(shlex.split(args), for_wsgi=True)


def _refuse_server_options(opts: argparse.Namespace, wrap_command: list[str]) -> None:
    """Options that only websockify's own server can honour are errors under WSGI."""
    given = {
        "a wrapped program (-- COMMAND)": bool(wrap_command),
        "--run-once": opts.run_once,
        "--timeout": bool(opts.timeout),
        "--idle-timeout": bool(opts.idle_timeout),
        "--unix-listen": bool(opts.unix_listen),
        "--inetd": opts.inetd,
        "--prefer-ipv6": opts.prefer_ipv6,
        "--max-connections": opts.max_connections != Limits().max_connections,
        "--socket-activation": opts.socket_activation,
        "--port-file": bool(opts.port_file),
        "--daemon": opts.daemon,
        "--pid-file": bool(opts.pid_file),
    }
    for option, present in given.items():
        if present:
            raise ConfigError(f"{option} needs websockify's own server, not a WSGI server "
                              "(use the WSGI server's own settings)")


def _settings(opts: argparse.Namespace, wrap_command: list[str], for_wsgi: bool) -> Settings:
    positional = list(opts.addresses)
    listen = None if for_wsgi else _listen(opts, positional)
    access = _access_settings(opts)
    target: Target | None
    if access.token_plugin is not None:
        if wrap_command or opts.unix_target:
            raise ConfigError("--token-plugin chooses the target: it excludes --unix-target "
                              "and a wrapped program")
        target = None
    elif wrap_command:
        target = None  # the wrapped program's listener, or --unix-target's
    elif opts.unix_target:
        target = UnixAddress(opts.unix_target)
    elif not positional:
        raise ConfigError("missing target_addr:target_port")
    else:
        target = _tcp_address(positional.pop(0), "target", need_host=True)
    if positional:
        raise ConfigError(f"unexpected argument {positional[0]!r}")
    if access.web_auth and not opts.web:
        raise ConfigError("--web-auth needs --web")
    if access.auth_plugin and access.auth_plugin.name.endswith("ClientCertCNAuth") and (
            for_wsgi or not opts.verify_client):
        raise ConfigError("ClientCertCNAuth checks the certificate that --verify-client "
                          "requires" + (": only websockify's own server passes it on"
                                        if for_wsgi else ": add --verify-client"))
    if opts.unix_listen_mode is not None and not opts.unix_listen:
        raise ConfigError("--unix-listen-mode needs --unix-listen")
    if opts.file_only and not opts.web:
        raise ConfigError("--file-only needs --web")
    web = Path(opts.web).resolve() if opts.web else None
    if web is not None and not web.is_dir():
        raise ConfigError(f"--web {opts.web}: not a directory")
    if not wrap_command and (opts.wrap_port is not None or opts.rebind):
        raise ConfigError("--wrap-port and --rebind need a wrapped program (-- COMMAND)")
    wrap = None
    if wrap_command:
        if opts.unix_target and opts.wrap_port is not None:
            raise ConfigError("--wrap-port names a TCP port; with --unix-target the wrapped "
                              "program listens on that unix socket instead")
        wrap = WrapSettings(tuple(wrap_command), mode=WrapMode(opts.wrap_mode),
                            program_port=opts.wrap_port, rebind_path=opts.rebind,
                            unix_target=opts.unix_target)
    return Settings(
        listen=listen,
        target=target,
        wrap=wrap,
        unix_listen_mode=(opts.unix_listen_mode if opts.unix_listen_mode is not None
                          else UNIX_LISTEN_MODE),
        prefer_ipv6=opts.prefer_ipv6,
        web=web,
        file_only=opts.file_only,
        heartbeat=opts.heartbeat,
        run_once=opts.run_once,
        timeout=opts.timeout,
        idle_timeout=opts.idle_timeout,
        allow_hixie=not opts.no_hixie,
        verbose=opts.verbose,
        log_file=opts.log_file,
        limits=Limits(
            handshake_timeout=opts.handshake_timeout,
            max_connections=opts.max_connections,
            max_message_size=opts.max_message_size,
            connect_timeout=opts.connect_timeout,
        ),
        tls=_tls_settings(opts, for_wsgi),
        target_tls=_target_tls_settings(opts),
        access=access,
        operations=_operations(opts),
    )


def _tls_settings(opts: argparse.Namespace, for_wsgi: bool) -> TlsSettings | None:
    """TLS for clients: on when --cert is given, or when the default self.pem exists."""
    if for_wsgi:
        given = [name for name in ("cert", "key", "key_password", "ssl_only", "verify_client",
                                   "cafile", "ssl_ciphers") if getattr(opts, name)]
        if given or opts.ssl_version != "default":
            option = "--" + (given[0] if given else "ssl_version").replace("_", "-")
            raise ConfigError(f"{option}: under a WSGI server, TLS is the WSGI server's "
                              "(e.g. gunicorn --certfile/--keyfile)")
        return None
    for option, value in (("--key", opts.key), ("--key-password", opts.key_password),
                          ("--verify-client", opts.verify_client),
                          ("--ssl-ciphers", opts.ssl_ciphers), ("--cafile", opts.cafile)):
        if value and not opts.cert and not os.path.exists(DEFAULT_CERT):
            raise ConfigError(f"{option} needs a certificate: --cert FILE "
                              f"({DEFAULT_CERT} not found)")
    if opts.cafile and not opts.verify_client:
        raise ConfigError("--cafile needs --verify-client (it checks client certificates)")
    if opts.cert is None and not os.path.exists(DEFAULT_CERT):
        if opts.ssl_only:
            raise ConfigError(f"--ssl-only needs a certificate: --cert FILE "
                              f"({DEFAULT_CERT} not found)")
        return None  # upstream's behaviour: plain only (the server says so in its log)
    cert = os.path.abspath(opts.cert or DEFAULT_CERT)
    return TlsSettings(
        cert=cert,
        key=os.path.abspath(opts.key) if opts.key else None,
        key_password=opts.key_password,
        ssl_only=opts.ssl_only,
        min_version=opts.ssl_version,
        ciphers=opts.ssl_ciphers,
        verify_client=opts.verify_client,
        cafile=os.path.abspath(opts.cafile) if opts.cafile else None,
    )


def _target_tls_settings(opts: argparse.Namespace) -> TargetTlsSettings | None:
    if not opts.ssl_target:
        if opts.ssl_target_cafile or opts.ssl_target_no_verify:
            raise ConfigError("--ssl-target-cafile and --ssl-target-no-verify need --ssl-target")
        return None
    if opts.ssl_target_cafile and opts.ssl_target_no_verify:
        raise ConfigError("--ssl-target-cafile and --ssl-target-no-verify exclude each other")
    cafile = os.path.abspath(opts.ssl_target_cafile) if opts.ssl_target_cafile else None
    return TargetTlsSettings(verify=not opts.ssl_target_no_verify, cafile=cafile)


def _access_settings(opts: argparse.Namespace) -> AccessSettings:
    token_plugin = opts.token_plugin
    token_source = opts.token_source
    if opts.target_config:
        if token_plugin:
            raise ConfigError("--target-config and --token-plugin exclude each other")
        token_plugin, token_source = "TokenFile", os.path.abspath(opts.target_config)
    if token_source is not None and not token_plugin:
        raise ConfigError("--token-source needs --token-plugin")
    if opts.host_token and not token_plugin:
        raise ConfigError("--host-token needs --token-plugin")
    if opts.auth_source is not None and not opts.auth_plugin:
        raise ConfigError("--auth-source needs --auth-plugin")
    if opts.web_auth and not opts.auth_plugin:
        raise ConfigError("--web-auth needs --auth-plugin")
    origins = tuple(origin for value in opts.origin
                    for origin in value.replace(",", " ").split())
    return AccessSettings(
        token_plugin=PluginSpec(token_plugin, token_source) if token_plugin else None,
        host_token=opts.host_token,
        auth_plugin=PluginSpec(opts.auth_plugin, opts.auth_source) if opts.auth_plugin else None,
        web_auth=opts.web_auth,
        origins=origins,
    )


def _operations(opts: argparse.Namespace) -> Operations:
    for option, value in (("--port-file", opts.port_file), ("--pid-file", opts.pid_file),
                          ("--syslog", opts.syslog)):
        if value == "":
            raise ConfigError(f"{option} needs a value")
    if opts.legacy_syslog and not opts.syslog:
        raise ConfigError("--legacy-syslog needs --syslog")
    if opts.daemon and opts.inetd:
        raise ConfigError("--daemon and --inetd exclude each other")
    if opts.port_file and opts.pid_file and \
            os.path.abspath(opts.port_file) == os.path.abspath(opts.pid_file):
        raise ConfigError("--port-file and --pid-file name the same file")
    try:
        syslog_address = syslog.parse_address(opts.syslog) if opts.syslog else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Operations(port_file=opts.port_file, pid_file=opts.pid_file, daemon=opts.daemon,
                      syslog=syslog_address, legacy_syslog=opts.legacy_syslog,
                      log_format=opts.log_format)


def _listen(opts: argparse.Namespace, positional: list[str]) -> Listen:
    if opts.inetd and opts.unix_listen:
        raise ConfigError("--inetd and --unix-listen exclude each other")
    if opts.socket_activation and (opts.inetd or opts.unix_listen):
        raise ConfigError("--socket-activation excludes --inetd and --unix-listen")
    if opts.inetd:
        return InheritedSocket(sys.stdin.fileno())
    if opts.socket_activation:
        return _activated_socket()
    if opts.unix_listen:
        return UnixAddress(opts.unix_listen)
    if not positional:
        raise ConfigError("missing [source_addr:]source_port")
    return _tcp_address(positional.pop(0), "source", need_host=False)


def _activated_socket() -> InheritedSocket:
    sockets = systemd.listen_fds()
    if not sockets:
        raise ConfigError("--socket-activation: no socket was passed "
                          "(LISTEN_FDS and LISTEN_PID do not name this process)")
    if len(sockets) > 1:
        names = ", ".join(sock.name for sock in sockets)
        raise ConfigError(f"--socket-activation: {len(sockets)} sockets were passed ({names}); "
                          "websockify listens on one: give its socket unit one Listen line")
    if not systemd.is_listening(sockets[0].fd):
        raise ConfigError(f"--socket-activation: fd {sockets[0].fd} is not a listening socket "
                          "(the socket unit needs Accept=no)")
    return InheritedSocket(sockets[0].fd)


def _tcp_address(text: str, what: str, need_host: bool) -> TcpAddress:
    """Parse ``host:port``, ``[v6]:port`` or (for the source) a bare ``port``."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if need_host:
            raise ConfigError(f"{what} {text!r}: expected host:port")
        host, port_text = "", text
    host = host.strip("[]") if host.startswith("[") else host
    if need_host and not host:
        raise ConfigError(f"{what} {text!r}: missing host")
    if ":" in host and not text.startswith("["):
        raise ConfigError(f"{what} {text!r}: put IPv6 addresses in brackets, e.g. [::1]:5900")
    try:
        port = _port(port_text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{what} {text!r}: {exc}") from None
    return TcpAddress(host, port)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    """A time limit that cannot be off: 0 would drop (or fail) every client at once."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid octal mode {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"invalid octal mode {text!r}")
    return mode


def main(argv: Sequence[str] | None = None) -> int:
    """The ``websockify`` command; returns the exit status (see errors.EXIT_*)."""
    try:
        settings = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        sys.stderr.write(f"websockify: error: {error} (see --help)\n")
        return EXIT_USAGE
    daemon_link = daemon.detach() if settings.operations.daemon else None
    status = EXIT_RUNTIME_FAILURE
    try:
        status = _start(settings, daemon_link)
    finally:
        if daemon_link is not None:
            daemon_link.failed(status)  # tells a still-waiting parent; no-op once ready
    return status


def _start(settings: Settings, daemon_link: daemon.DaemonLink | None) -> int:
    try:
        logsetup.configure(settings)
    except OSError as exc:
        sys.stderr.write(f"websockify: error: --log-file {settings.log_file}: "
                         f"{exc.strerror or exc}\n")
        return EXIT_STARTUP_FAILURE
    except StartupError as error:
        sys.stderr.write(f"websockify: error: {error}\n")
        return EXIT_STARTUP_FAILURE
    ops = settings.operations
    readiness = Readiness(port_file=ops.port_file, pid_file=ops.pid_file,
                          notifier=systemd.Notifier.from_environment(), daemon=daemon_link,
                          json_lines=ops.log_format == "json")
    try:
        return _serve(settings, readiness)
    finally:
        readiness.close()


def _serve(settings: Settings, readiness: Readiness) -> int:
    from websockify import server

    try:
        return server.run(settings, readiness)
    except ConfigError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except StartupError as error:
        logger.error("%s", error)
        return EXIT_STARTUP_FAILURE
    except WebsockifyError as error:
        logger.error("%s", error)
        return EXIT_RUNTIME_FAILURE
