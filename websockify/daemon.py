"""``-D/--daemon``: detach from the terminal, yet report start-up like a foreground run.

The classic double fork: the process that will serve is a grandchild in a session
of its own, so it has no controlling terminal and cannot get one, and it is not a
child of the shell.  Unlike a bare double fork, the original process waits: the
daemon keeps writing its log to the terminal's stderr until it listens, then tells
the original process through a pipe either "ready" (the parent prints the
readiness line and exits 0) or the exit status of its failed start (the parent
exits with it, after the daemon's own error lines went to the terminal).  So
``websockify -D … && next`` runs ``next`` only once the port is open, and a port in
use fails the command.

Descriptors 0, 1 and 2 of the daemon are /dev/null from the start; the terminal's
stderr is kept only in a close-on-exec copy behind ``sys.stderr``, so a wrapped
program never holds the terminal (or a CI job's pipe) open, and after "ready"
that copy becomes /dev/null too.

Differences from upstream's ``-D``, on purpose: the working directory and the
umask are kept (upstream changes to ``/`` and sets umask 0, which makes relative
paths on the command line mean something else and created files world-writable).

``detach()`` must run before the server starts (before the gevent hub runs) and
before logging is set up (the log's stream handler takes ``sys.stderr`` then).
"""

from __future__ import annotations

import contextlib
import os
import sys

from websockify.errors import EXIT_STARTUP_FAILURE

_READY = b"ready "
_FAILED = b"exit "


class DaemonLink:
    """The detached process's end of the pipe to the original, waiting, process."""

    def __init__(self, fd: int, terminal: int) -> None:
        self._fd: int | None = fd
        self._terminal = terminal

    def ready(self, line: str) -> None:
        """We listen: the parent prints ``line`` and exits 0; our stderr goes to /dev/null."""
        if self._send(_READY + line.encode()):
            _flush_stdio()
            _to_devnull(self._terminal)

    def failed(self, status: int) -> None:
        """We exit with ``status`` before being ready; no-op once ``ready`` was sent."""
        self._send(_FAILED + str(status).encode())

    def _send(self, message: bytes) -> bool:
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        try:
            os.write(fd, message)
        except OSError:
            pass  # the parent is gone (killed): nobody waits any more
        finally:
            os.close(fd)
        return True


def detach() -> DaemonLink:
    """Double-fork; returns in the daemon only (the original process exits here)."""
    _flush_stdio()
    for fd in (0, 1, 2):  # a closed one would be reused by the pipe, then overwritten
        try:
            os.fstat(fd)
        except OSError:
            _to_devnull(fd, inheritable=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)  # the middle process exits at once
        os._exit(_wait_for_daemon(read_end))
    os.close(read_end)
    os.setsid()  # a new session: no controlling terminal
    if os.fork():
        os._exit(0)  # the session leader leaves, so no terminal can ever be acquired
    try:
        terminal = os.dup(2)  # close-on-exec: no child inherits it
    except OSError:  # started with stderr closed: nothing to report to
        terminal = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    for fd in (0, 1, 2):
        _to_devnull(fd, inheritable=True)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout, never closed
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = open(terminal, "w", buffering=1, encoding=encoding,  # noqa: SIM115
                      errors="backslashreplace")
    return DaemonLink(write_end, terminal)


def _wait_for_daemon(read_end: int) -> int:
    """The original process's exit status, from what the daemon reports."""
    chunks = []
    try:
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
    except KeyboardInterrupt:  # Ctrl-C reaches us only: the daemon has its own session
        _say("websockify: interrupted; the daemon is still starting in the background")
        return 130
    os.close(read_end)
    message = b"".join(chunks)
    if message.startswith(_READY):
        _say(message[len(_READY):].decode(errors="replace"))
        return 0
    if message.startswith(_FAILED):
        with contextlib.suppress(ValueError):
            return int(message[len(_FAILED):])
    _say("websockify: error: the daemon ended before it was ready")
    return EXIT_STARTUP_FAILURE


def _say(line: str) -> None:
    """A line on stderr, if there is one (a caller may have closed it)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


def _to_devnull(fd: int, inheritable: bool = False) -> None:
    """Point ``fd`` at /dev/null, keeping its number (file objects on it stay valid)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, fd, inheritable=inheritable)
    os.close(devnull)
