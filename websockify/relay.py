"""The pump between one WebSocket client and one target, until either side ends.

Two greenlets per connection and no queues::

    handler greenlet:  client.recv ─▶ codec.receive ─▶ Data ─▶ target.sendall
    spawned greenlet:  target.recv ─▶ codec.encode_data ─▶ header + payload ─▶ client.sendmsg

Backpressure is the blocking send: when the client reads slowly, the greenlet that
feeds it waits in ``sendmsg`` and stops reading the target, so the kernel's socket
buffers (not ours) hold the backlog and memory stays bounded.  Control frames
(pongs, pings, closes) share the client socket with data frames, so every write
to the client goes through one lock and frames never interleave.

Endings, each with one close code:

* client Close → answered with the same code, target closed;
* client EOF → target closed;
* target EOF → Close 1000; target reset → Close 1011;
* a protocol violation → its close code (1002, 1007, 1009), target closed;
* ``close(1001)`` from the server on shutdown; a missed heartbeat pong → 1011.

After sending a Close the relay waits at most ``CLOSE_TIMEOUT`` for the client's
answer, then hangs up anyway.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
from collections.abc import Sequence

import gevent
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore

from websockify.errors import FrameError
from websockify.protocol.codec import Buffer, Close, Codec, Data, Ping, Pong

logger = logging.getLogger(__name__)

#: Bytes asked for per recv().  Large reads let one call carry many frames (or one
#: whole 64 KiB message); the buffer is allocated per read and freed at once, so an
#: idle connection holds none.
RECV_SIZE = 256 * 1024
#: Seconds to wait for the client's answer to our Close (and for a Close to be sent).
CLOSE_TIMEOUT = 2.0


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

    def __init__(self, client: ClientConnection, target: socket.socket, heartbeat: float = 0.0):
        self._client = client.sock
        self._codec = client.codec
        self._leftover = client.leftover
        self._peer = client.peer
        self._target = target
        self._heartbeat = heartbeat if client.codec.supports_ping else 0.0
        self._write_lock = Semaphore()
        self._close_sent = False
        self._awaiting_pong = False
        self._client_done = Event()
        self._ending = "client closed the connection"
        self.bytes_to_target = 0
        self.bytes_to_client = 0

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Relay until both directions are finished; closes both sockets."""
        downstream = gevent.spawn(self._pump_target_to_client)
        heartbeat = self._start_heartbeat()
        try:
            self._pump_client_to_target()
        finally:
            self._client_done.set()
            if heartbeat is not None:
                heartbeat.close()
            self._target.close()
            downstream.join(CLOSE_TIMEOUT)
            downstream.kill(block=False)
            self._client.close()
            logger.info(
                "%s: %s (%d bytes to target, %d to client)",
                self._peer, self._ending, self.bytes_to_target, self.bytes_to_client,
            )

    def close(self, code: int, reason: str) -> None:
        """End the connection from outside (server shutdown): Close ``code``, then hang up."""
        self._ending = reason
        self._close_client(code, reason)

    # ------------------------------------------------------- client → target

    def _pump_client_to_target(self) -> None:
        data: Buffer = self._leftover
        self._leftover = b""
        try:
            while True:
                if data and not self._deliver(data):
                    return
                data = self._client.recv(RECV_SIZE)
                if not data:
                    if not self._close_sent:
                        self._ending = "client hung up without a Close"
                    return
        except OSError as exc:
            if not self._client_done.is_set():
                self._ending = f"client connection lost ({exc})"

    def _deliver(self, data: Buffer) -> bool:
        """Parse client bytes and act on them; False once the client side is finished."""
        try:
            events = self._codec.receive(data)
        except FrameError as error:
            self._act_on(error.events)
            self._ending = f"protocol error: {error.reason} (close {error.close_code})"
            logger.warning("%s: %s", self._peer, self._ending)
            self._send_close(error.close_code, error.reason)
            self._drain_client()
            return False
        return self._act_on(events)

    def _act_on(self, events: Sequence[object]) -> bool:
        for event in events:
            if type(event) is Data:
                try:
                    self._target.sendall(event.payload)
                except OSError as exc:
                    self._ending = f"target connection lost ({exc.strerror or exc})"
                    self._send_close(1011, "target connection lost")
                    return False
                self.bytes_to_target += memoryview(event.payload).nbytes
            elif isinstance(event, Ping):
                self._send_to_client([self._codec.encode_pong(event.payload)])
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, Close):
                if not self._close_sent:
                    self._ending = f"client sent Close {event.code}"
                    self._send_close(event.code if event.code is not None else 1000, "")
                return False
        return True

    def _drain_client(self) -> None:
        """After our Close for a violation: read and drop until EOF, briefly.

        Closing a socket with unread input makes the kernel send a reset, which can
        destroy the Close frame we just sent before the client reads it.
        """
        try:
            self._client.shutdown(stdlib_socket.SHUT_WR)
            with gevent.Timeout(CLOSE_TIMEOUT, False):
                while self._client.recv(RECV_SIZE):
                    pass
        except OSError:
            pass

    # ------------------------------------------------------- target → client

    def _pump_target_to_client(self) -> None:
        try:
            while True:
                data = self._target.recv(RECV_SIZE)
                if not data:
                    break
                self._send_to_client(self._codec.encode_data(data))
                self.bytes_to_client += len(data)
        except OSError as exc:
            if self._client_done.is_set():
                return  # our own teardown closed the target under us
            self._ending = f"target connection lost ({exc.strerror or exc})"
            self._close_client(1011, "target connection lost")
            return
        if not self._client_done.is_set():
            self._ending = "target closed the connection"
            self._close_client(1000, "target closed the connection")

    # ------------------------------------------------------- writing to the client

    def _send_to_client(self, pieces: list[Buffer]) -> None:
        with self._write_lock:
            _send_pieces(self._client, pieces)

    def _send_close(self, code: int, reason: str) -> None:
        """Send our Close once; bounded, so a client that stopped reading can't hold us."""
        with gevent.Timeout(CLOSE_TIMEOUT, False), self._write_lock:
            if self._close_sent:
                return
            self._close_sent = True
            try:
                self._client.sendall(self._codec.encode_close(code, reason))
            except OSError:
                pass

    def _close_client(self, code: int, reason: str) -> None:
        """Close handshake started by us: send Close, wait for the answer, hang up."""
        self._send_close(code, reason)
        if not self._client_done.wait(CLOSE_TIMEOUT):
            try:
                self._client.shutdown(stdlib_socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------- heartbeat

    def _start_heartbeat(self) -> object | None:
        """Ping every ``heartbeat`` seconds; a ping still unanswered at the next is a dead peer."""
        if not self._heartbeat:
            return None
        timer = gevent.get_hub().loop.timer(self._heartbeat, self._heartbeat)
        timer.start(gevent.spawn, self._heartbeat_tick)
        return timer

    def _heartbeat_tick(self) -> None:
        if self._client_done.is_set() or self._close_sent:
            return
        if self._awaiting_pong:
            self._ending = f"no pong within {self._heartbeat:g}s"
            logger.info("%s: %s", self._peer, self._ending)
            self._close_client(1011, "heartbeat timeout")
            return
        self._awaiting_pong = True
        try:
            self._send_to_client([self._codec.encode_ping(b"")])
        except OSError:
            pass


def _send_pieces(sock: socket.socket, pieces: list[Buffer]) -> None:
    """Write pieces in order in as few system calls as the kernel allows, without copying."""
    if len(pieces) == 1:
        sock.sendall(pieces[0])
        return
    sent = sock.sendmsg(pieces)
    for piece in pieces:
        size = memoryview(piece).nbytes
        if sent >= size:
            sent -= size
            continue
        sock.sendall(memoryview(piece)[sent:] if sent else piece)
        sent = 0


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
