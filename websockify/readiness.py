"""Telling whoever waits for websockify that it listens, and that it stops.

CI jobs, systemd and init scripts each wait for a server in their own way, so once
the listening socket is open ``Readiness.ready`` tells all of them at once:

- ``--port-file FILE`` gets the port (or the unix socket's path) and a newline,
  written to a temporary file in the same directory and renamed into place, so a
  reader never sees a half-written file;
- ``--pid-file FILE`` gets our process id the same way (written only once we
  listen, so a second instance that fails to start never overwrites a running
  one's file);
- a readiness line on stderr, ``websockify: ready on ADDRESS``, in the same form
  whatever the log level or destination (with ``--log-format json`` it is a JSON
  object too, ``{"event": "ready", "address": …}``, so stderr stays one JSON object
  per line); under ``--daemon`` the waiting parent prints it, then exits 0;
- systemd gets ``READY=1`` (``Type=notify``).

``stopping()`` sends systemd ``STOPPING=1`` when the shutdown begins; ``close()``
removes the port and pid files at exit, if they are still ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from websockify.errors import StartupError
from websockify.systemd import Notifier

if TYPE_CHECKING:
    from websockify.daemon import DaemonLink

logger = logging.getLogger(__name__)


class Readiness:
    """The announcements of one server process; see the module docstring."""

    def __init__(self, *, port_file: str | None = None, pid_file: str | None = None,
                 notifier: Notifier | None = None, daemon: DaemonLink | None = None,
                 json_lines: bool = False) -> None:
        self.port_file = Path(port_file).absolute() if port_file else None
        self.pid_file = Path(pid_file).absolute() if pid_file else None
        self.notifier = notifier or Notifier(None)
        self.daemon = daemon
        self.json_lines = json_lines
        self._written: dict[Path, str] = {}
        if self.port_file is not None:
            # A stale file from an earlier run must not pass for this run's port.  (If
            # it cannot be removed, writing it once listening fails with the reason.)
            with contextlib.suppress(OSError):
                self.port_file.unlink()

    def ready(self, listener: socket.socket, address: str) -> None:
        """The server listens on ``listener`` (described as ``address``): tell everyone."""
        if self.pid_file is not None:
            self._write(self.pid_file, f"{os.getpid()}\n")
        if self.port_file is not None:
            self._write(self.port_file, f"{_port_or_path(listener)}\n")
        line = f"websockify: ready on {address}"
        if self.daemon is not None:
            line += f" (daemon pid {os.getpid()})"
        if self.json_lines:
            line = json.dumps({"event": "ready", "address": address, "pid": os.getpid(),
                               "message": line})
        if self.daemon is not None:
            self.daemon.ready(line)
        else:
            # stderr may be absent or a socket (inetd's "wait" services): never fatal.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        self.notifier.ready(f"listening on {address}")

    def stopping(self) -> None:
        """A shutdown has begun."""
        self.notifier.stopping("shutting down")

    def close(self) -> None:
        """Remove the files ``ready`` wrote, unless someone else has replaced them."""
        for path, text in self._written.items():
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    path.unlink()
        self._written.clear()

    def _write(self, path: Path, text: str) -> None:
        try:
            write_atomically(path, text)
        except OSError as exc:
            raise StartupError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._written[path] = text


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old or the new file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _port_or_path(listener: socket.socket) -> str:
    name = listener.getsockname()
    if listener.family == socket.AF_UNIX:
        return os.path.abspath(name if isinstance(name, str) else os.fsdecode(name))
    return str(name[1])
