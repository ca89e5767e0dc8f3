"""The pump between one WebSocket client and one target, until either side ends.

One greenlet per connection (the handler's own), one loop, non-blocking sockets::

    client readable ─▶ recv ─▶ codec.receive ─▶ Data payloads ─▶ to_target ─▶ send ─▶ target
    target readable ─▶ recv ─▶ codec.encode_data ─▶ header + payload ─▶ to_client ─▶ send ─▶ client

Each direction holds at most one read's worth of pending output, and a side is
only read while the output it feeds is empty.  That is the backpressure: a slow
client stops the reading of the target (the kernel's socket buffers hold the
rest), yet the other direction keeps flowing, so a target that writes before it
reads can never deadlock the relay.  One greenlet (rather than one per
direction) halves the memory an idle connection costs; control frames (pong,
ping, close) join the same ``to_client`` queue, so frames never interleave.

Endings, each with one close code:

* client Close → answered with the same code, target closed;
* client EOF → target closed;
* target EOF → Close 1000; target reset → Close 1011;
* a protocol violation → its close code (1002, 1007, 1009), target closed;
* ``close(1001)`` from the server on shutdown; a missed heartbeat pong → 1011.

After a Close of ours the relay waits at most ``CLOSE_TIMEOUT`` for the client's
answer (and for pending output to drain), then hangs up anyway.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket as stdlib_socket
import time
from collections.abc import Sequence

import gevent
from gevent import get_hub, socket
from gevent.hub import Waiter

from websockify.errors import FrameError
from websockify.protocol.codec import Buffer, Close, Codec, Data, Event, Ping, Pong

logger = logging.getLogger(__name__)

#: Bytes asked for per recv().  Large reads let one call carry many frames (or a
#: whole 64 KiB message).
RECV_SIZE = 256 * 1024

#: The one buffer every relay of this process reads into.  Greenlets run one at a
#: time and never switch between a read and its processing, and whatever must
#: outlive that step is copied out of it (unmasking writes new buffers; output the
#: socket did not take at once is copied by ``_send_some``).  So an idle connection
#: holds no read buffer, and no read pays for allocating (and, at this size, mmap-ing
#: and unmapping) a fresh one.
_read_buffer = bytearray(RECV_SIZE)
_read_view = memoryview(_read_buffer)
#: Seconds to wait for the client's answer to our Close (and for output to drain).
CLOSE_TIMEOUT = 2.0
#: More pieces than this are joined before sendmsg (the kernel caps iovecs at 1024).
MAX_PIECES = 64

_READ, _WRITE = 1, 2


class _Wake(enum.IntEnum):
    """Why the relay's loop woke up."""

    CLIENT_READABLE = enum.auto()
    CLIENT_WRITABLE = enum.auto()
    TARGET_READABLE = enum.auto()
    TARGET_WRITABLE = enum.auto()
    DEADLINE = enum.auto()
    HEARTBEAT = enum.auto()
    REQUEST = enum.auto()


class ClientConnection:
    """A client socket after the handshake: what ``environ['wsgi.websocket']`` holds.

    ``leftover`` are bytes the client sent right after its handshake that the HTTP
    reader had already buffered; the relay parses them before reading the socket.
    """

    __slots__ = ("codec", "leftover", "peer", "sock", "version")

    def __init__(
        self, sock: socket.socket, codec: Codec, leftover: bytes, peer: str, version: str
    ) -> None:
        self.sock = sock
        self.codec = codec
        self.leftover = leftover
        self.peer = peer
        self.version = version


class Relay:
    """Relays one client connection to one connected target socket."""

    def __init__(self, client: ClientConnection, target: socket.socket,
                 heartbeat: float = 0.0) -> None:
        self._client = client.sock
        self._codec = client.codec
        self._leftover = client.leftover
        self._peer = client.peer
        self._target = target
        self._heartbeat = heartbeat if client.codec.supports_ping else 0.0
        self._waiter = Waiter()
        self._to_target: list[Buffer] = []
        self._to_client: list[Buffer] = []
        self._reading_client = True
        self._reading_target = True
        self._discarding_client = False
        self._close_sent = False
        self._awaiting_pong = False
        self._deadline: float | None = None
        self._close_request: tuple[int, str] | None = None
        self._ending = "client closed the connection"
        self.bytes_to_target = 0
        self.bytes_to_client = 0

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Relay until both directions are finished; closes both sockets."""
        loop = get_hub().loop
        client_fd, target_fd = self._client.fileno(), self._target.fileno()
        watchers = {
            _Wake.CLIENT_READABLE: loop.io(client_fd, _READ),
            _Wake.CLIENT_WRITABLE: loop.io(client_fd, _WRITE),
            _Wake.TARGET_READABLE: loop.io(target_fd, _READ),
            _Wake.TARGET_WRITABLE: loop.io(target_fd, _WRITE),
        }
        heartbeat = None
        if self._heartbeat:
            heartbeat = loop.timer(self._heartbeat, self._heartbeat)
            heartbeat.start(self._waiter.switch, _Wake.HEARTBEAT)
        self._client.settimeout(0.0)
        self._target.settimeout(0.0)
        try:
            if self._leftover:
                self._from_client(self._leftover)
                self._leftover = b""
            while True:
                self._flush()
                if not (self._reading_client or self._reading_target
                        or self._to_client or self._to_target):
                    break
                wake = self._wait(loop, watchers)
                if wake is _Wake.DEADLINE:
                    break
                self._on_wake(wake)
        finally:
            for watcher in watchers.values():
                watcher.close()
            if heartbeat is not None:
                heartbeat.close()
            self._target.close()
            self._client.close()
            logger.info("%s: %s (%d bytes to target, %d to client)",
                        self._peer, self._ending, self.bytes_to_target, self.bytes_to_client)

    def close(self, code: int, reason: str) -> None:
        """End the connection from another greenlet (server shutdown): Close ``code``."""
        self._close_request = (code, reason)
        get_hub().loop.run_callback(self._waiter.switch, _Wake.REQUEST)

    def _wait(self, loop: object, watchers: dict[_Wake, object]) -> _Wake:
        """Sleep until a socket this state cares about is ready, or the deadline."""
        armed = []
        if self._reading_client and not self._to_target:
            armed.append(_Wake.CLIENT_READABLE)
        if self._to_target:
            armed.append(_Wake.TARGET_WRITABLE)
        if self._reading_target and not self._to_client:
            armed.append(_Wake.TARGET_READABLE)
        if self._to_client:
            armed.append(_Wake.CLIENT_WRITABLE)
        for wake in armed:
            watchers[wake].start(self._waiter.switch, wake)  # type: ignore[attr-defined]
        timer = None
        if self._deadline is not None:
            timer = loop.timer(max(0.0, self._deadline - time.monotonic()))  # type: ignore[attr-defined]
            timer.start(self._waiter.switch, _Wake.DEADLINE)
        try:
            wake_reason: _Wake = self._waiter.get()
            return wake_reason
        finally:
            for wake in armed:
                watchers[wake].stop()  # type: ignore[attr-defined]
            if timer is not None:
                timer.close()

    def _on_wake(self, wake: _Wake) -> None:
        if wake is _Wake.CLIENT_READABLE:
            self._read_client()
        elif wake is _Wake.TARGET_READABLE:
            self._read_target()
        elif wake is _Wake.HEARTBEAT:
            self._heartbeat_tick()
        elif wake is _Wake.REQUEST and self._close_request is not None:
            code, reason = self._close_request
            self._close_request = None
            self._ending = reason
            self._start_closing(code, reason)
        # A writable socket needs nothing here: the loop flushes before every wait.

    # ------------------------------------------------------- client → target

    def _read_client(self) -> None:
        try:
            data = _read_view[: self._client.recv_into(_read_buffer)]
        except BlockingIOError:
            return
        except OSError as exc:
            self._client_lost(f"client connection lost ({exc.strerror or exc})")
            return
        if not data:
            if not self._close_sent:
                self._ending = "client hung up without a Close"
            self._reading_client = False
            self._reading_target = False
            self._set_deadline()
        elif not self._discarding_client:
            self._from_client(data)

    def _from_client(self, data: Buffer) -> None:
        try:
            events = self._codec.receive(data)
        except FrameError as error:
            self._act_on(error.events)
            self._ending = f"protocol error: {error.reason} (close {error.close_code})"
            logger.warning("%s: %s", self._peer, self._ending)
            self._start_closing(error.close_code, error.reason)
            # Keep reading, but only to drop input until the client hangs up: closing
            # with unread input makes the kernel send a reset, which can destroy the
            # Close frame before the client reads it.
            self._discarding_client = True
            return
        self._act_on(events)

    def _act_on(self, events: Sequence[Event]) -> None:
        for event in events:
            if type(event) is Data:
                self._to_target.append(event.payload)
                self.bytes_to_target += memoryview(event.payload).nbytes
            elif isinstance(event, Ping):
                self._to_client.append(self._codec.encode_pong(event.payload))
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, Close):
                if not self._close_sent:
                    self._ending = f"client sent Close {event.code}"
                    self._queue_close(event.code if event.code is not None else 1000, "")
                self._reading_client = False
                self._reading_target = False
                self._set_deadline()
                return

    # ------------------------------------------------------- target → client

    def _read_target(self) -> None:
        try:
            data = _read_view[: self._target.recv_into(_read_buffer)]
        except BlockingIOError:
            return
        except OSError as exc:
            self._ending = f"target connection lost ({exc.strerror or exc})"
            self._start_closing(1011, "target connection lost")
            return
        if not data:
            self._ending = "target closed the connection"
            self._start_closing(1000, "target closed the connection")
            return
        self._to_client.extend(self._codec.encode_data(data))
        self.bytes_to_client += len(data)

    # ------------------------------------------------------- writing

    def _flush(self) -> None:
        """Send what the sockets take now, without blocking."""
        if self._to_target:
            try:
                self._to_target = _send_some(self._target, self._to_target)
            except OSError as exc:
                self._to_target = []
                if self._reading_target:
                    self._ending = f"target connection lost ({exc.strerror or exc})"
                    self._start_closing(1011, "target connection lost")
        if self._to_client:
            try:
                self._to_client = _send_some(self._client, self._to_client)
            except OSError as exc:
                self._client_lost(f"client connection lost ({exc.strerror or exc})")
                return
            if not self._to_client and self._discarding_client:
                _shutdown(self._client, stdlib_socket.SHUT_WR)

    def _queue_close(self, code: int, reason: str) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._to_client.append(self._codec.encode_close(code, reason))

    def _start_closing(self, code: int, reason: str) -> None:
        """Our side ends the connection: Close after pending data, await the answer."""
        self._queue_close(code, reason)
        self._reading_target = False
        self._set_deadline()

    def _set_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + CLOSE_TIMEOUT

    def _client_lost(self, ending: str) -> None:
        self._ending = ending
        self._reading_client = self._reading_target = False
        self._to_client = []

    # ------------------------------------------------------- heartbeat

    def _heartbeat_tick(self) -> None:
        """A ping still unanswered when the next is due means the peer is gone."""
        if self._close_sent:
            return
        if self._awaiting_pong:
            self._ending = f"no pong within {self._heartbeat:g}s"
            logger.info("%s: %s", self._peer, self._ending)
            self._start_closing(1011, "heartbeat timeout")
            return
        self._awaiting_pong = True
        self._to_client.append(self._codec.encode_ping(b""))


def _send_some(sock: socket.socket, pieces: list[Buffer]) -> list[Buffer]:
    """Send as much of ``pieces`` as the socket takes now; returns what is left."""
    if len(pieces) > MAX_PIECES:
        pieces = [b"".join(pieces)]
    try:
        sent = sock.send(pieces[0]) if len(pieces) == 1 else sock.sendmsg(pieces)
    except BlockingIOError:
        return [_own(piece) for piece in pieces]
    for index, piece in enumerate(pieces):
        size = memoryview(piece).nbytes
        if sent < size:
            rest = [_own(rest_piece) for rest_piece in pieces[index:]]
            if sent:
                rest[0] = memoryview(rest[0])[sent:]
            return rest
        sent -= size
    return []


def _own(piece: Buffer) -> Buffer:
    """``piece``, copied if it lies in the shared read buffer (it must wait for the socket)."""
    if isinstance(piece, memoryview) and piece.obj is _read_buffer:
        return bytes(piece)
    return piece


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


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
        client.sock.close()
