"""Opening the connection to the target: a TCP address or a unix socket, TLS optional."""

from __future__ import annotations

import errno
import functools
import socket as stdlib_socket
import ssl

from gevent import socket

from websockify.errors import TargetError
from websockify.settings import Target, TcpAddress


def connect(target: Target, timeout: float,
            tls: ssl.SSLContext | None = None) -> socket.socket:
    """Connect to ``target`` within ``timeout`` seconds; raises TargetError.

    TCP_NODELAY is set because the relay writes whole frames: delaying a small
    write only adds latency to interactive traffic such as VNC input events.
    With ``tls`` (--ssl-target) a TCP target's TLS handshake, and its certificate
    check against the target's host name, fall within the same ``timeout``.  Unix
    targets are local and stay plain, as with upstream.
    """
    try:
        if isinstance(target, TcpAddress):
            sock = _connect_tcp(target, timeout)
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = _start_tls(sock, tls, target)
        else:
            sock = _connect_socket(stdlib_socket.AF_UNIX, target.path, timeout)
    except TimeoutError as exc:
        raise TargetError(f"target {target} did not accept within {timeout:g}s") from exc
    except ssl.SSLCertVerificationError as exc:
        raise TargetError(f"TLS to target {target} failed: certificate verify failed: "
                          f"{exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise TargetError(f"TLS to target {target} failed: {exc.reason or exc}") from exc
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise TargetError(f"cannot reach target {target}: {reason}") from exc
    sock.settimeout(None)
    return sock


def _connect_tcp(target: TcpAddress, timeout: float) -> socket.socket:
    """Connect to a literal address directly; resolve a name first.

    ``create_connection`` resolves the name and tries each of its addresses in
    turn.  gevent resolves names in a thread pool, even a literal one: for the
    usual ``127.0.0.1:5900`` that thread hop cost about a tenth of a connection's
    setup, for no answer the address did not already give.
    """
    family = _literal_family(target.host)
    if family is None:
        return socket.create_connection((target.host, target.port), timeout=timeout)
    return _connect_socket(family, (target.host, target.port), timeout)


def _connect_socket(family: int, address: str | tuple[str, int], timeout: float) -> socket.socket:
    """A new socket of ``family`` connected to ``address``; closed again if that fails."""
    sock = socket.socket(family, stdlib_socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


@functools.lru_cache(maxsize=64)
def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 when ``host`` is an IP address literal, else None."""
    for family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
        try:
            stdlib_socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def _start_tls(sock: socket.socket, context: ssl.SSLContext,
               target: TcpAddress) -> socket.socket:
    try:
        return context.wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise
