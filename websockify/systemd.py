"""systemd's two service protocols, without libsystemd: socket activation and sd_notify.

**Socket activation** (``sd_listen_fds(3)``): the service manager opens the listening
sockets itself (``websockify@.socket``) and starts us with them as descriptors 3, 4 …,
announced by ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for which process: a child
must not take its parent's sockets) and ``LISTEN_FDNAMES`` (their names, colon
separated).  ``listen_fds()`` reads them once and removes the variables, so a wrapped
program does not see sockets that are not its own.  The command line uses it as a
listen source next to ``--inetd`` (``--socket-activation``).

**Readiness** (``sd_notify(3)``): under ``Type=notify`` the manager waits for
``READY=1`` on the datagram socket named by ``NOTIFY_SOCKET`` (a path, or ``@name``
for an abstract socket) before it counts the service as started, and ``STOPPING=1``
tells it a stop is under way.  ``Notifier`` sends them; it never blocks the server
(a full queue drops the message and says so at debug level) and does nothing when
no manager listens.  ``readiness.Readiness`` calls it when the server listens and
when it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: The first descriptor the service manager passes (after stdin, stdout, stderr).
LISTEN_FDS_START = 3
#: The name systemd gives a socket whose unit sets no FileDescriptorName=.
UNNAMED = "unknown"
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    """One descriptor passed by the service manager, with its FileDescriptorName=."""

    fd: int
    name: str


def listen_fds(environ: MutableMapping[str, str] | None = None,
               pid: int | None = None) -> list[ActivatedSocket]:
    """The sockets the service manager passed to this process, in order.

    Empty when none were passed or they were meant for another process
    (``LISTEN_PID`` is not ``pid``, by default ours).  The activation variables are
    removed from ``environ`` (by default ``os.environ``) either way, and the
    descriptors are made close-on-exec, so no child inherits them.
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in _ACTIVATION_VARIABLES}
    pid_text, count_text = values["LISTEN_PID"], values["LISTEN_FDS"]
    if pid_text is None or count_text is None:
        return []
    try:
        meant_for, count = int(pid_text), int(count_text)
    except ValueError:
        logger.warning("ignoring malformed socket activation: LISTEN_PID=%r LISTEN_FDS=%r",
                       pid_text, count_text)
        return []
    if meant_for != (os.getpid() if pid is None else pid) or count <= 0:
        return []
    names = values["LISTEN_FDNAMES"].split(":") if values["LISTEN_FDNAMES"] else []
    if len(names) != count:
        names = [UNNAMED] * count
    sockets = []
    for offset, name in enumerate(names):
        fd = LISTEN_FDS_START + offset
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            logger.warning("socket activation announced fd %d, which is not open", fd)
            continue
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        sockets.append(ActivatedSocket(fd, name))
    return sockets


def is_listening(fd: int) -> bool:
    """Whether ``fd`` is a listening socket (not a connection: ``Accept=yes`` passes those)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        try:
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False


class Notifier:
    """Sends sd_notify messages to the service manager, if one asked for them.

    ``address`` is the value of ``NOTIFY_SOCKET``: a filesystem path, or ``@name``
    for a socket in the abstract namespace.  None (or an address family we do not
    speak, such as ``vsock:``) makes every call a no-op that returns False.
    """

    def __init__(self, address: str | None) -> None:
        self.address: str | None = None
        if address and address[0] in "/@":
            self.address = "\0" + address[1:] if address.startswith("@") else address
        elif address:
            logger.debug("NOTIFY_SOCKET=%r is not a unix socket: not notifying", address)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET`` asks for; the variable is removed, as
        ``sd_notify(unset_environment=1)`` does, so a wrapped program cannot claim
        our readiness."""
        env = os.environ if environ is None else environ
        return cls(env.pop("NOTIFY_SOCKET", None))

    def ready(self, status: str = "") -> bool:
        """``READY=1``: start-up is finished (the socket listens)."""
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: a shutdown has begun."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=…``: a line ``systemctl status`` shows."""
        return self.notify(*_status(text))

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines in one datagram; True if the manager got it."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            # MSG_DONTWAIT: a manager that does not read must not stall the server.
            sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            logger.debug("sd_notify %s not delivered: %s", assignments[0], exc)
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        return True


def _status(text: str) -> tuple[str, ...]:
    """A STATUS= line, if there is a status; the protocol is line based."""
    return (f"STATUS={' '.join(text.split())}",) if text else ()
