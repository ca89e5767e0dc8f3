"""Opening the listening socket: TCP (v4, v6, dual stack), unix, or inherited (inetd)."""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
import stat

from gevent import socket

from websockify.errors import ConfigError, StartupError
from websockify.settings import InheritedSocket, Listen, TcpAddress, UnixAddress

BACKLOG = 1024


def open_listener(listen: Listen, *, prefer_ipv6: bool = False,
                  unix_mode: int = 0o600) -> socket.socket:
    """A bound, listening socket for ``listen``; raises StartupError with the reason."""
    try:
        if isinstance(listen, TcpAddress):
            return _tcp(listen, prefer_ipv6)
        if isinstance(listen, UnixAddress):
            return _unix(listen, unix_mode)
        return _inherited(listen)
    except OSError as exc:
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc


def describe(sock: socket.socket) -> str:
    """The address a listener really got (port 0 becomes the chosen port)."""
    name = sock.getsockname()
    if sock.family == stdlib_socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if sock.family == stdlib_socket.AF_INET6 else f"{host}:{port}"


def _tcp(address: TcpAddress, prefer_ipv6: bool) -> socket.socket:
    infos = stdlib_socket.getaddrinfo(
        address.host or None, address.port, stdlib_socket.AF_UNSPEC,
        stdlib_socket.SOCK_STREAM, 0, stdlib_socket.AI_PASSIVE,
    )
    preferred = stdlib_socket.AF_INET6 if prefer_ipv6 else stdlib_socket.AF_INET
    infos.sort(key=lambda info: info[0] != preferred)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        if family == stdlib_socket.AF_INET6 and not address.host:
            # "::" with an empty host: serve IPv4 clients too (dual stack).
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix(address: UnixAddress, mode: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(address.path).st_mode):
            os.unlink(address.path)  # a stale socket of an earlier run
    sock = socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(address.path)
        os.chmod(address.path, mode)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _inherited(address: InheritedSocket) -> socket.socket:
    sock = socket.socket(fileno=os.dup(address.fd))
    if sock.type != stdlib_socket.SOCK_STREAM:
        sock.close()
        raise ConfigError(f"{address} is not a stream socket")
    sock.listen(BACKLOG)
    return sock
