"""Opening the listening socket: TCP (v4, v6, dual stack), unix, or inherited (inetd).

A unix socket path is shared ground: another websockify may be serving on it.  A
path that answers a connection is never taken over (:class:`StartupError`); a
socket file nobody answers on is a leftover, removed before binding; and at exit
only a socket file that is still the one we bound is removed.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
import stat
from dataclasses import dataclass

from gevent import socket

from websockify.errors import StartupError
from websockify.settings import (
    UNIX_LISTEN_MODE,
    InheritedSocket,
    Listen,
    TcpAddress,
    UnixAddress,
)

BACKLOG = 1024


def open_listener(listen: Listen, *, prefer_ipv6: bool = False,
                  unix_mode: int = UNIX_LISTEN_MODE) -> socket.socket:
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
    _remove_stale_socket(address.path)
    sock = socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(address.path)
        os.chmod(address.path, mode)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file at ``path`` that no server answers on; refuse a live one.

    Anything but a socket is left alone, with an error.  The probe is a
    non-blocking connect, so it never waits: refused means stale; accepted, or a
    full backlog (EAGAIN), means a server is there.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartupError(f"cannot listen on unix:{path}: it exists and is not a socket")
    except FileNotFoundError:
        return
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        outcome = probe.connect_ex(path)
    finally:
        probe.close()
    if outcome in (errno.ECONNREFUSED, errno.ENOENT):
        os.unlink(path)  # a leftover of a server that is gone
        return
    if outcome in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise StartupError(f"cannot listen on unix:{path}: another server is listening "
                          "there (stop it, or choose another --unix-listen path)")
    raise StartupError(f"cannot listen on unix:{path}: {os.strerror(outcome)}")


@dataclass(frozen=True, slots=True)
class UnixSocketFile:
    """The socket file we bound, known by its device and inode.

    Another instance may have replaced the file at the same path since (after ours
    stopped answering); removing the path then would cut that server off.
    """

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> UnixSocketFile:
        """The file at ``path`` now: call right after binding it."""
        info = os.lstat(path)
        return cls(path, info.st_dev, info.st_ino)

    def remove_if_ours(self) -> bool:
        """Unlink the path if it is still this file; True when it was removed."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (info.st_dev, info.st_ino) != (self.device, self.inode):
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True


def _inherited(address: InheritedSocket) -> socket.socket:
    sock = socket.socket(fileno=os.dup(address.fd))
    if sock.type != stdlib_socket.SOCK_STREAM:
        sock.close()
        raise StartupError(f"{address} is not a stream socket")
    sock.listen(BACKLOG)
    return sock
