"""The report rebind.so writes about the wrapped program's listener, read back.

websockify creates the file empty before it starts a generation of the program
(the shim does nothing without it); the shim appends, under ``flock``, one line
per socket it moved, or one for the ``--unix-target`` socket it saw listen::

    <pid> tcp <original port> <127.0.0.1 | ::1> <loopback port> <socket inode>
    <pid> unix <absolute path>

The first line is the program's listener; a second tcp line is the same port in
the other address family, from the same process.  Lines are complete when their
newline is there: a partial one is left for the next read.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from websockify.settings import Target, TcpAddress, UnixAddress

#: Environment variables shared with rebind.so (rebind/rebind.c).
REPORT_ENV = "WEBSOCKIFY_REBIND_REPORT"
PORT_ENV = "WEBSOCKIFY_REBIND_PORTS"
UNIX_ENV = "WEBSOCKIFY_REBIND_UNIX"
#: Set by the standalone ``rebind OLD_PORT NEW_PORT COMMAND``; never by websockify.
FIXED_PORT_ENV = "WEBSOCKIFY_REBIND_TO"


@dataclass(frozen=True)
class Listener:
    """A socket of the wrapped program that listens, and where to reach it."""

    pid: int
    target: Target
    #: The port the program asked for (None for a unix socket).
    original_port: int | None = None

    def __str__(self) -> str:
        if self.original_port is None:
            return f"pid {self.pid} listens on {self.target}"
        return f"pid {self.pid} listens on port {self.original_port}, moved to {self.target}"


def parse_report(data: bytes) -> list[Listener]:
    """The listeners in complete report lines; malformed lines are skipped."""
    found = []
    for raw in data.split(b"\n")[:-1]:
        line = raw.decode("utf-8", "surrogateescape")
        fields = line.split(" ", 2)
        with contextlib.suppress(ValueError, IndexError):
            pid = int(fields[0])
            if fields[1] == "unix" and fields[2].startswith("/"):
                found.append(Listener(pid, UnixAddress(fields[2])))
                continue
            tcp = line.split()
            if fields[1] == "tcp" and len(tcp) == 6 and tcp[3] in ("127.0.0.1", "::1"):
                found.append(Listener(pid, TcpAddress(tcp[3], int(tcp[4])), int(tcp[2])))
    return found


class ListenerReport:
    """One generation's report file: created empty, then read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)

    def environment(self, program_port: int | None, unix_target: str | None) -> dict[str, str]:
        """The variables that tell rebind.so which listener is the program's."""
        if unix_target is not None:
            return {REPORT_ENV: str(self.path), PORT_ENV: "",
                    UNIX_ENV: os.path.abspath(unix_target)}
        port = "*" if program_port is None else str(program_port)
        return {REPORT_ENV: str(self.path), PORT_ENV: port, UNIX_ENV: ""}

    def new_listeners(self) -> list[Listener]:
        """The listeners reported since the last call."""
        try:
            with open(self.path, "rb") as report:
                report.seek(self._offset)
                data = report.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return parse_report(complete)
