"""``--syslog host:port|/dev/log``: log records as syslog datagrams, RFC 5424 or RFC 3164.

Each record is one datagram, sent over UDP to ``host:port`` or to a local unix
datagram socket such as ``/dev/log``.  The format is RFC 5424's::

    <PRI>1 2026-12-02T09:30:01.123456Z HOSTNAME websockify PID - - MESSAGE

with the message in UTF-8 behind a byte-order mark when it is not plain ASCII, as
the RFC asks.  ``--legacy-syslog`` sends upstream websockify's older form,
``<PRI>websockify[PID]: MESSAGE`` (RFC 3164 as local syslog daemons accept it;
they add the time and host).  The facility is ``user``, or ``daemon`` under
``--daemon``, as upstream chose; the severity follows the record's level.

Sending never blocks the server: a datagram the receiver has no room for, or that
finds no receiver (syslogd restarting), is dropped and counted, and the next one
that gets through is preceded by a warning saying how many were lost.  Each send
names the address again, so a restarted syslogd is found without reconnecting.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time

from websockify.errors import StartupError

#: syslog facilities (RFC 5424 table 1) websockify uses.
LOG_USER = 1
LOG_DAEMON = 3
#: The largest datagram sent; rsyslog's default limit.  Longer messages are cut.
MAX_DATAGRAM = 8192
APP_NAME = "websockify"

_SEVERITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))
_DEBUG_SEVERITY = 7
_BOM = "\ufeff"


def severity(levelno: int) -> int:
    """The syslog severity of a logging level (critical 2 … debug 7)."""
    for level, value in _SEVERITIES:
        if levelno >= level:
            return value
    return _DEBUG_SEVERITY


def rfc5424(priority: int, created: float, hostname: str, procid: int, message: str) -> bytes:
    """One RFC 5424 message (no MSGID, no structured data), cut to MAX_DATAGRAM."""
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    micros = int((created % 1) * 1_000_000)
    header = (f"<{priority}>1 {timestamp}.{micros:06d}Z {_header_field(hostname, 255)} "
              f"{APP_NAME} {procid} - - ")
    body = message if message.isascii() else _BOM + message
    return _cut(header.encode("ascii") + body.encode("utf-8", "replace"))


def rfc3164(priority: int, procid: int, message: str) -> bytes:
    """One message in upstream's legacy form, cut to MAX_DATAGRAM."""
    return _cut(f"<{priority}>{APP_NAME}[{procid}]: {message}".encode("utf-8", "replace"))


def _header_field(text: str, limit: int) -> str:
    """RFC 5424 header fields are printable ASCII without spaces, or "-" when empty."""
    cleaned = "".join(ch for ch in text if "!" <= ch <= "~")[:limit]
    return cleaned or "-"


def _cut(datagram: bytes) -> bytes:
    if len(datagram) <= MAX_DATAGRAM:
        return datagram
    # Cut on a character boundary, so the receiver still sees valid UTF-8.
    return datagram[:MAX_DATAGRAM].decode("utf-8", "ignore").encode("utf-8")


SyslogAddress = tuple[str, int] | str


class SyslogHandler(logging.Handler):
    """A logging handler sending each record as one syslog datagram.

    ``address`` is ``(host, port)`` for UDP or a path for a unix datagram socket.
    The address is checked (resolved, or found to be a socket) once, here; a
    problem is a StartupError, so the command fails before it serves.
    """

    def __init__(self, address: SyslogAddress, *, facility: int = LOG_USER,
                 legacy: bool = False) -> None:
        super().__init__()
        self.facility = facility
        self.legacy = legacy
        self.hostname = socket.gethostname()
        self.dropped = 0
        self._destination: str | tuple
        if isinstance(address, str):
            self._destination = address
            family = socket.AF_UNIX
            try:
                mode = os.stat(address).st_mode
            except OSError as exc:
                raise StartupError(f"--syslog {address}: {exc.strerror or exc}") from exc
            if not stat.S_ISSOCK(mode):
                raise StartupError(f"--syslog {address}: not a socket")
        else:
            host, port = address
            try:
                infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
            except OSError as exc:
                raise StartupError(f"--syslog {host}:{port}: {exc.strerror or exc}") from exc
            family, _, _, _, self._destination = infos[0]
        self._socket = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def datagram(self, record: logging.LogRecord, message: str) -> bytes:
        """The bytes that carry ``message`` (the formatted ``record``)."""
        priority = self.facility * 8 + severity(record.levelno)
        if self.legacy:
            return rfc3164(priority, os.getpid(), message)
        return rfc5424(priority, record.created, self.hostname, os.getpid(), message)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self.dropped:
            note = logging.LogRecord(record.name, logging.WARNING, __file__, 0,
                                     "%d syslog messages were lost (the receiver was full "
                                     "or absent)", (self.dropped,), None)
            if self._send(self.datagram(note, note.getMessage())):
                self.dropped = 0
        if not self._send(self.datagram(record, message)):
            self.dropped += 1

    def _send(self, datagram: bytes) -> bool:
        try:
            self._socket.sendto(datagram, socket.MSG_DONTWAIT, self._destination)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._socket.close()
        super().close()


def parse_address(text: str) -> SyslogAddress:
    """``host:port`` (UDP, ``[v6]:port`` too) or a path; ValueError if neither.

    As upstream: text with a colon is a host and port, anything else a path.
    """
    if ":" not in text:
        return os.path.abspath(text)
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--syslog {text!r}: expected host:port or a socket path")
    return host, int(port_text)
