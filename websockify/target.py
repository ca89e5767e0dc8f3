"""Opening the connection to the target: a TCP address or a unix socket."""

from __future__ import annotations

import errno
import socket as stdlib_socket

from gevent import socket

from websockify.errors import TargetError
from websockify.settings import Target, TcpAddress


def connect(target: Target, timeout: float) -> socket.socket:
    """Connect to ``target`` within ``timeout`` seconds; raises TargetError.

    TCP_NODELAY is set because the relay writes whole frames: delaying a small
    write only adds latency to interactive traffic such as VNC input events.
    """
    try:
        if isinstance(target, TcpAddress):
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(target.path)
            except BaseException:
                sock.close()
                raise
    except TimeoutError as exc:
        raise TargetError(f"target {target} did not accept within {timeout:g}s") from exc
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise TargetError(f"cannot reach target {target}: {reason}") from exc
    sock.settimeout(None)
    return sock
