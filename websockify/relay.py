"""The gevent pump of one connection: wait for what it wants, feed it, send what it returns.

The connection's life (states, close handshake, heartbeat, backpressure,
counters) is :class:`websockify.protocol.connection.Connection`, which knows no
sockets.  This module only does its I/O, in one greenlet (the handler's own) on
non-blocking sockets::

    client readable ─▶ recv ─▶ Connection.client_data ─▶ to_target ─▶ send ─▶ target
    target readable ─▶ recv ─▶ Connection.target_data ─▶ to_client ─▶ send ─▶ client

Watchers stay armed while the connection wants the same things, so a steady
stream costs no watcher start and stop per read.  Whatever wakes the loop
(sockets, the deadline timer, ``close()`` from another greenlet) sets a bit in
:class:`Wakeup`; a bit set while the relay is busy elsewhere is kept for its
next wait and never makes later waits return at once.

While the connection does not read the client (its output to a slow target is
pending), the client is probed once per ``PROBE_INTERVAL`` with a zero-timeout
``poll`` for POLLRDHUP/POLLHUP/POLLERR: a client that sent FIN or a reset is
noticed without reading (and so without buffering) its data
(``Connection.client_leaving``).  A bounded extra read was the alternative; it
would only see the FIN when the client sent less than that bound.

While closing, each deadline tick also passes the bytes the kernel still holds for
either peer (``TIOCOUTQ``): a peer that drains them slowly is making progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import select
import socket as stdlib_socket
import struct
import termios
import time
from typing import Any

import gevent
from gevent import get_hub, getcurrent, socket

from websockify.client import ClientConnection
from websockify.protocol.codec import Buffer
from websockify.protocol.connection import CLOSE_TIMEOUT, MAX_PIECES, Connection, State

logger = logging.getLogger(__name__)

#: Bytes asked for per recv().  Large reads let one call carry many frames (or a
#: whole 64 KiB message).
RECV_SIZE = 256 * 1024

#: The one buffer every relay of this process reads into.  Greenlets run one at a
#: time and never switch between a read and its processing, and whatever must
#: outlive that step is copied out of it: the codecs never return views of their
#: input, and the connection copies target bytes still waiting for the client when
#: it is told what was sent (``Connection.client_sent``), before any next read.  So
#: an idle connection holds no read buffer, and no read pays for allocating (and,
#: at this size, mmap-ing and unmapping) a fresh one.
_read_buffer = bytearray(RECV_SIZE)
_read_view = memoryview(_read_buffer)
#: Seconds between checks whether a client that is not read has left.
PROBE_INTERVAL = 1.0
#: Reads at most that empty a socket's input before it is closed (no reset then).
_FINAL_DRAIN_READS = 16

_READ, _WRITE = 1, 2
# Why the loop woke up: bits of Wakeup.reasons.
_CLIENT_READABLE = 1
_CLIENT_WRITABLE = 2
_TARGET_READABLE = 4
_TARGET_WRITABLE = 8
_DEADLINE = 16
_PROBE = 32
_REQUEST = 64
_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR
_OPEN = State.OPEN


class Wakeup:
    """Reasons to wake, collected as bits; switches to the relay only while it waits."""

    __slots__ = ("_sleeper", "reasons")

    def __init__(self) -> None:
        self.reasons = 0
        self._sleeper: Any = None

    def set(self, reason: int) -> None:
        """Called from the hub (watcher callbacks, ``run_callback``)."""
        self.reasons |= reason
        sleeper = self._sleeper
        if sleeper is not None:
            self._sleeper = None
            sleeper.switch()

    def wait(self, hub: Any) -> int:
        """The reasons set since the last wait; sleeps in the hub if there are none."""
        if not self.reasons:
            self._sleeper = getcurrent()
            try:
                hub.switch()
            finally:
                self._sleeper = None
        reasons = self.reasons
        self.reasons = 0
        return reasons


class Relay:
    """Relays one client connection to one connected target socket."""

    __slots__ = ("_client", "_leftover", "_peer", "_request", "_target", "_wake", "connection")

    def __init__(self, client: ClientConnection, target: socket.socket,
                 heartbeat: float = 0.0) -> None:
        self._client = client.sock
        self._leftover = client.leftover
        self._peer = client.peer
        self._target = target
        self.connection = Connection(client.codec, time.monotonic(), heartbeat)
        self._wake = Wakeup()
        self._request: tuple[int, str] | None = None

    def run(self) -> None:
        """Relay until the connection is done; closes both sockets and logs the ending."""
        hub = get_hub()
        loop = hub.loop
        conn = self.connection
        client, target, wake = self._client, self._target, self._wake
        watchers = [
            (_CLIENT_READABLE, loop.io(client.fileno(), _READ)),
            (_CLIENT_WRITABLE, loop.io(client.fileno(), _WRITE)),
            (_TARGET_READABLE, loop.io(target.fileno(), _READ)),
            (_TARGET_WRITABLE, loop.io(target.fileno(), _WRITE)),
        ]
        probe: Any = None  # made when first needed: most connections never need it
        timer: Any = None
        timer_at: float | None = None
        armed = 0
        client.settimeout(0.0)
        target.settimeout(0.0)
        try:
            if self._leftover:
                conn.client_data(self._leftover)
                self._leftover = b""
            while True:
                if conn.to_client:
                    self._send_client()
                if conn.to_target:
                    self._send_target()
                if conn.state is not _OPEN:  # closing: half-close, or end
                    if conn.shut_client:
                        _shutdown(client)
                        conn.client_shut()
                    if conn.shut_target:
                        _shutdown(target)
                        conn.target_shut()
                    if conn.done:
                        break
                wanted = ((_CLIENT_READABLE if conn.read_client else 0)
                          | (_CLIENT_WRITABLE if conn.to_client else 0)
                          | (_TARGET_READABLE if conn.read_target else 0)
                          | (_TARGET_WRITABLE if conn.to_target else 0))
                if wanted != armed:
                    for bit, watcher in watchers:
                        if (wanted ^ armed) & bit:
                            if wanted & bit:
                                watcher.start(wake.set, bit)
                            else:
                                watcher.stop()
                    armed = wanted
                if conn.deadline != timer_at:
                    if timer is not None:
                        timer.close()
                        timer = None
                    timer_at = conn.deadline
                    if timer_at is not None:
                        timer = loop.timer(max(0.0, timer_at - time.monotonic()))
                        timer.start(wake.set, _DEADLINE)
                if not conn.read_client and conn.client_connected:
                    if probe is None:
                        probe = loop.timer(PROBE_INTERVAL)
                    if not probe.active:
                        probe.start(wake.set, _PROBE)

                reasons = wake.wait(hub)

                if reasons & _PROBE and not conn.read_client and conn.client_connected:
                    self._probe_client()
                if reasons & _DEADLINE:
                    timer_at = None  # fired: a new one is made for the next deadline
                    in_flight = 0
                    if conn.state is not _OPEN:
                        in_flight = _unsent(client) + _unsent(target)
                    conn.tick(time.monotonic(), in_flight)
                if reasons & _REQUEST and self._request is not None:
                    conn.shutdown(*self._request)
                    self._request = None
                # The client first: target bytes stay in the shared buffer until sent.
                if reasons & _CLIENT_READABLE and conn.read_client:
                    self._read_client()
                if reasons & _TARGET_READABLE and conn.read_target:
                    self._read_target()
        finally:
            for _, watcher in watchers:
                watcher.close()
            if probe is not None:
                probe.close()
            if timer is not None:
                timer.close()
            stranded = 0
            if conn.counters.close_timed_out:
                stranded = _unsent(client) + _unsent(target)
            _close(target)
            _close(client)
            conn.counters.ended = time.monotonic()
            self._log_ending(stranded)

    def close(self, code: int, reason: str) -> None:
        """End the connection from another greenlet (server shutdown): Close ``code``."""
        self._request = (code, reason)
        get_hub().loop.run_callback(self._wake.set, _REQUEST)

    # -- I/O ---------------------------------------------------------------------------

    def _read_client(self) -> None:
        try:
            size = self._client.recv_into(_read_buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.connection.client_lost(exc.strerror or str(exc))
            return
        if size:
            self.connection.client_data(_read_view[:size])
        else:
            self.connection.client_eof()

    def _read_target(self) -> None:
        try:
            size = self._target.recv_into(_read_buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.connection.target_lost(exc.strerror or str(exc))
            return
        if size:
            self.connection.target_data(_read_view[:size])
        else:
            self.connection.target_eof()

    def _send_client(self) -> None:
        try:
            sent = _send(self._client, self.connection.to_client)
        except OSError as exc:
            self.connection.client_lost(exc.strerror or str(exc))
            return
        self.connection.client_sent(sent)

    def _send_target(self) -> None:
        try:
            sent = _send(self._target, self.connection.to_target)
        except OSError as exc:
            self.connection.target_lost(exc.strerror or str(exc))
            return
        self.connection.target_sent(sent)

    def _probe_client(self) -> None:
        """Has the client (not read now) sent FIN or a reset?  Costs one poll()."""
        poller = select.poll()
        poller.register(self._client.fileno(), _GONE)
        events = poller.poll(0)
        if not events:
            return
        if events[0][1] & (select.POLLHUP | select.POLLERR):
            self.connection.client_leaving("client connection lost (reset)")
        else:
            self.connection.client_leaving("client hung up without a Close")

    def _log_ending(self, stranded: int) -> None:
        conn = self.connection
        counters = conn.counters
        ending = conn.ending
        reason = ending.reason if ending is not None else "ended"
        code = ending.close_code if ending is not None else 1006
        notes = ""
        if counters.undelivered_to_target:
            notes += f"; {counters.undelivered_to_target} bytes NOT delivered to the target"
        if counters.undelivered_to_client:
            notes += f"; {counters.undelivered_to_client} bytes NOT delivered to the client"
        if counters.close_timed_out:
            notes += f"; closing gave up after {CLOSE_TIMEOUT:g}s without progress"
            if stranded:
                notes += f", {stranded} bytes sent but never taken by the peers"
        level = logging.WARNING if code in (1002, 1007, 1009) else logging.INFO
        logger.log(level, "%s: %s (close %d; %d bytes to target, %d to client%s)",
                   self._peer, reason, code, counters.target_bytes_sent,
                   counters.payload_bytes_to_client, notes)


def _send(sock: socket.socket, pieces: list[Buffer]) -> int:
    """Send what the socket takes now of ``pieces``; returns the byte count."""
    try:
        count = len(pieces)
        if count == 1:
            return sock.send(pieces[0])
        return sock.sendmsg(pieces if count <= MAX_PIECES else pieces[:MAX_PIECES])
    except BlockingIOError:
        return 0


def _unsent(sock: socket.socket) -> int:
    """Bytes the kernel holds for the peer (sent, not yet acknowledged or read)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    (count,) = struct.unpack("i", raw)
    return int(count)


def _shutdown(sock: socket.socket) -> None:
    """Half-close: the peer reads EOF after everything sent so far."""
    with contextlib.suppress(OSError):
        sock.shutdown(stdlib_socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    """Close ``sock`` after emptying its input, so the kernel sends FIN, not a reset.

    A reset would drop what the kernel has not sent yet: the tail of the stream.
    """
    with contextlib.suppress(OSError):
        for _ in range(_FINAL_DRAIN_READS):
            if not sock.recv_into(_read_buffer):
                break
    sock.close()


def refuse(client: ClientConnection, code: int, reason: str) -> None:
    """Close a client that never got a target: Close ``code`` with ``reason``, hang up."""
    try:
        with gevent.Timeout(CLOSE_TIMEOUT, False):
            client.sock.sendall(client.codec.encode_close(code, reason))
            client.sock.shutdown(stdlib_socket.SHUT_WR)
            while client.sock.recv(RECV_SIZE):
                pass
    except OSError:
        pass
    finally:
        client.sock.settimeout(0.0)
        _close(client.sock)
