"""One relayed WebSocket connection as a state machine, without sockets or clocks.

In the manner of h11's ``Connection`` and websockets' ``Protocol``: the I/O layer
(:mod:`websockify.relay`) feeds it what happened and does what it asks.

Inputs: :meth:`Connection.client_data`, :meth:`~Connection.client_eof`,
:meth:`~Connection.client_lost` (a reset), the same three for the target,
:meth:`~Connection.client_leaving` (FIN or reset seen while the client was not
read), :meth:`~Connection.tick` (the clock, with the bytes the kernel still holds
for the peers) and :meth:`~Connection.shutdown`.

Outputs, read after every input:

* ``to_client`` / ``to_target``: pieces to send, in order.  The I/O layer sends
  what the socket takes and reports it with :meth:`~Connection.client_sent` /
  :meth:`~Connection.target_sent`, so the counters count delivered bytes only.
* ``read_client`` / ``read_target``: whether that side should be read now.
* ``shut_client`` / ``shut_target``: all output to that side is out; half-close it
  (``shutdown(SHUT_WR)``) and report it with :meth:`~Connection.client_shut` /
  :meth:`~Connection.target_shut`.  The sockets are still read until their EOF, so
  none is closed with unread input (the kernel would answer with a reset and drop
  what it had not sent yet).
* ``deadline``: when :meth:`~Connection.tick` must be called next (None: never).
* ``done``, ``ending`` (one reason, one close code) and ``counters``.

Backpressure: a side is read only while the output it feeds is empty, so each
direction holds at most one read's worth.  The client is not read either while
a pong of ours waits for it: a client that pings without reading cannot make
the server queue replies.

States, with every transition in :data:`TRANSITIONS`::

    OPEN ──we close (target ended, heartbeat, shutdown)──▶ CLOSING_BY_US
      │  ──the client's Close────────────────────────────▶ CLOSING_BY_CLIENT
      │  ──protocol violation, client EOF or reset───────▶ DRAINING
    CLOSING_BY_US ──the client's Close, violation, EOF──▶ DRAINING
    CLOSING_BY_CLIENT ──our answer delivered, EOF───────▶ DRAINING
    DRAINING ──all handed over, both sides at EOF (or at
               a check, nothing left in the kernel)─────▶ CLOSED
    any but CLOSED ──no progress for CLOSE_TIMEOUT──────▶ CLOSED
                     (OPEN only once the client is leaving)

While closing, client data is still relayed to the target until the client's
Close (a target that sent EOF may still read); target data is read and dropped
(no data frame may follow our Close).  ``CLOSE_TIMEOUT`` counts from the last
byte delivered either way (or taken out of the kernel's queue), so a client that
reads the tail of a stream slowly gets all of it; one that reads nothing is let
go, and the counters say how much was not delivered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from websockify.protocol.codec import Buffer, Close, Codec, Data, Ping, Pong, Violation

#: Seconds without progress (a byte delivered either way) before a closing
#: connection is given up.  It is checked every quarter of it.
CLOSE_TIMEOUT = 2.0
_CHECKS = 4
#: Close code for an ending without a Close frame (RFC 6455 section 7.1.5).
NO_CLOSE_FRAME = 1006
#: More output pieces than this are joined (once per read: many tiny frames would
#: otherwise cost one sendmsg per 64 of them, and the kernel caps iovecs at 1024).
MAX_PIECES = 64
#: ``deadline`` value asking for a tick at once (closing started; the time is unknown here).
_NOW = float("-inf")


class State(enum.Enum):
    """Where the connection is in its life."""

    OPEN = "open"
    CLOSING_BY_US = "closing by us"
    CLOSING_BY_CLIENT = "closing by the client"
    DRAINING = "draining"
    CLOSED = "closed"


class Trigger(enum.Enum):
    """What moves the connection from one state to the next."""

    WE_CLOSE = "we send Close"
    CLIENT_CLOSE = "the client's Close"
    VIOLATION = "protocol violation"
    CLIENT_GONE = "client EOF or reset"
    ANSWER_SENT = "our answer to the client's Close is delivered"
    FINISHED = "all delivered, both sides at EOF"
    TIMEOUT = "no progress while closing"


_OPEN = State.OPEN
_CLOSING_BY_US = State.CLOSING_BY_US

# What has happened to a socket (bits, one set per side).
#: Its input ended (read EOF).
EOF = 1
#: It failed (reset) or was given up: nothing more goes to it.
GONE = 2
#: We half-closed it (its peer reads EOF after our last byte).
SHUT = 4
#: The client sent FIN or a reset while it was not read (client only).
LEAVING = 8
#: Nothing more comes from it.
ENDED = EOF | GONE

#: Every transition.  A trigger not listed for a state changes nothing (a second
#: reason to close, a shutdown while closing).
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.OPEN, Trigger.WE_CLOSE): State.CLOSING_BY_US,
    # Only once the client is leaving (FIN or reset seen while it was not read).
    (State.OPEN, Trigger.TIMEOUT): State.CLOSED,
    (State.OPEN, Trigger.CLIENT_CLOSE): State.CLOSING_BY_CLIENT,
    (State.OPEN, Trigger.VIOLATION): State.DRAINING,
    (State.OPEN, Trigger.CLIENT_GONE): State.DRAINING,
    (State.CLOSING_BY_US, Trigger.CLIENT_CLOSE): State.DRAINING,
    (State.CLOSING_BY_US, Trigger.VIOLATION): State.DRAINING,
    (State.CLOSING_BY_US, Trigger.CLIENT_GONE): State.DRAINING,
    (State.CLOSING_BY_US, Trigger.TIMEOUT): State.CLOSED,
    (State.CLOSING_BY_CLIENT, Trigger.ANSWER_SENT): State.DRAINING,
    (State.CLOSING_BY_CLIENT, Trigger.CLIENT_GONE): State.DRAINING,
    (State.CLOSING_BY_CLIENT, Trigger.TIMEOUT): State.CLOSED,
    (State.DRAINING, Trigger.FINISHED): State.CLOSED,
    (State.DRAINING, Trigger.TIMEOUT): State.CLOSED,
}


class Party(enum.Enum):
    """Who ended the connection."""

    CLIENT = "client"
    TARGET = "target"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a connection ended: the first cause, and the one close code it got.

    ``close_code`` is the code of the Close we sent (or answered with), or 1006
    when the client left without one.
    """

    reason: str
    close_code: int
    by: Party


@dataclass(slots=True)
class Counters:
    """What one connection moved, for the log line, the access log and metrics."""

    started: float
    ended: float | None = None
    #: Wire bytes read from the client, and delivered to it.
    client_bytes_received: int = 0
    client_bytes_sent: int = 0
    #: Bytes read from the target, and delivered to it.
    target_bytes_received: int = 0
    target_bytes_sent: int = 0
    #: Target bytes whose frames reached the client whole.
    payload_bytes_to_client: int = 0
    frames_from_client: int = 0
    frames_to_client: int = 0
    close_code_sent: int | None = None
    close_code_received: int | None = None
    #: Bytes that were given up at the end (the side left or stopped reading).
    undelivered_to_client: int = 0
    undelivered_to_target: int = 0
    #: The closing handshake or the drain was given up (CLOSE_TIMEOUT without progress).
    close_timed_out: bool = False


class Connection:
    """The life of one client ↔ target connection; see the module docstring."""

    __slots__ = (
        "_client",
        "_client_queued",
        "_codec",
        "_data_end",
        "_data_payload",
        "_give_up_at",
        "_heartbeat",
        "_in_flight",
        "_lent",
        "_next_ping",
        "_paused_since_ping",
        "_ping_end",
        "_ping_was_out",
        "_pong_end",
        "_progressed",
        "_quiet_checks",
        "_target",
        "counters",
        "deadline",
        "done",
        "ending",
        "read_client",
        "read_target",
        "shut_client",
        "shut_target",
        "state",
        "to_client",
        "to_target",
    )

    def __init__(self, codec: Codec, now: float, heartbeat: float = 0.0) -> None:
        self._codec = codec
        self.state = State.OPEN
        self.counters = Counters(started=now)
        self.ending: Ending | None = None
        self.to_client: list[Buffer] = []
        self.to_target: list[Buffer] = []
        self.read_client = True
        self.read_target = True
        self.shut_client = False
        self.shut_target = False
        self.done = False
        #: What has happened to each socket: bits of EOF, GONE, SHUT, LEAVING.
        self._client = 0
        self._target = 0
        #: The buffer ``target_data`` last lent us: pieces still in it must be copied
        #: before the caller reads into it again.
        self._lent: object = None
        #: The data frame waiting in ``to_client``: its payload size and where it ends
        #: in the client's output stream (at most one: the target is read only when
        #: ``to_client`` is empty).
        self._data_payload = 0
        self._data_end = 0
        self._client_queued = 0  # wire bytes ever queued for the client
        self._pong_end = 0  # where the last pong ends in that stream
        # Heartbeat: a ping is outstanding until any byte comes from the client.
        self._heartbeat = heartbeat if codec.supports_ping else 0.0
        self._next_ping = now + self._heartbeat if self._heartbeat else None
        self._ping_end: int | None = None
        self._paused_since_ping = False
        self._ping_was_out = False
        # Close timeout: set when closing starts, extended while bytes move.
        self._give_up_at: float | None = None
        self._progressed = False
        self._in_flight = 0
        self._quiet_checks = 0
        self.deadline: float | None = self._next_ping

    # -- inputs ------------------------------------------------------------------------

    def client_data(self, data: Buffer) -> None:
        """Bytes from the client (only read during the call)."""
        self.counters.client_bytes_received += len(data)
        self._ping_end = None  # any byte is a sign of life
        state = self.state
        if state is _OPEN or state is _CLOSING_BY_US:
            to_target = self.to_target
            pongs: list[bytes] | None = None
            for event in self._codec.receive(data):
                if type(event) is Data:
                    to_target.append(event.payload)
                elif type(event) is Ping:
                    if pongs is None:
                        pongs = []
                    pongs.append(self._codec.encode_pong(event.payload))
                elif type(event) is Close:
                    self._send_pongs(pongs)
                    pongs = None
                    self._on_client_close(event)
                    break
                elif type(event) is Violation:
                    self._send_pongs(pongs)
                    pongs = None
                    self._on_violation(event)
                    break
                else:
                    assert type(event) is Pong
            if pongs:
                self._send_pongs(pongs)
            if len(to_target) > MAX_PIECES:
                to_target[:] = [b"".join(to_target)]
            self.counters.frames_from_client = self._codec.frames_received
            if self._target & GONE and to_target:
                self.counters.undelivered_to_target += sum(len(piece) for piece in to_target)
                to_target.clear()
        # Else the conversation is over: the input is read only to reach the EOF.
        self._refresh()

    def client_eof(self) -> None:
        """The client closed its side of the TCP connection."""
        self._client |= EOF
        self._end("client hung up without a Close", NO_CLOSE_FRAME, Party.CLIENT)
        self._move(Trigger.CLIENT_GONE)
        self._refresh()

    def client_lost(self, why: str) -> None:
        """The client's socket failed (reset): nothing more can go to it."""
        self._client |= GONE
        self._end(f"client connection lost ({why})", NO_CLOSE_FRAME, Party.CLIENT)
        self._drop_client_output()
        self._move(Trigger.CLIENT_GONE)
        self._refresh()

    def client_leaving(self, why: str) -> None:
        """The client sent FIN (or a reset) while it was not read.

        What it sent before still goes to the target, but only as long as the target
        takes it: the close timeout runs from here.  Reading the client resumes as
        usual and ends with its EOF (or the reset).
        """
        self._client |= LEAVING
        self._end(why, NO_CLOSE_FRAME, Party.CLIENT)
        if self._give_up_at is None and not self.done:
            self._give_up_at = _NOW
        self._refresh()

    def target_data(self, data: Buffer) -> None:
        """Bytes from the target; ``data`` is lent until the next ``client_sent``."""
        size = len(data)
        self.counters.target_bytes_received += size
        if self.state is _OPEN:
            self._lent = data.obj if type(data) is memoryview else None
            pieces = self._codec.encode_data(data)
            self.to_client.extend(pieces)
            for piece in pieces:
                self._client_queued += len(piece)
            self._data_payload = size
            self._data_end = self._client_queued
            self.counters.frames_to_client += 1
            self.read_target = False
        # Else our Close is queued: no data frame may follow it; read only to the EOF.

    def target_eof(self) -> None:
        """The target closed its side: the client gets Close 1000 after the data."""
        self._target |= EOF
        self._we_close("target closed the connection", 1000, "", Party.TARGET)
        self._refresh()

    def target_lost(self, why: str) -> None:
        """The target's socket failed: the client gets Close 1011."""
        self._target |= GONE
        self.counters.undelivered_to_target += sum(len(piece) for piece in self.to_target)
        self.to_target.clear()
        self._we_close(f"target connection lost ({why})", 1011, "target connection lost",
                       Party.TARGET)
        self._refresh()

    def shutdown(self, code: int, reason: str) -> None:
        """End from outside (the server stops): Close ``code`` with ``reason``."""
        self._we_close(reason, code, reason, Party.SERVER)
        self._refresh()

    def tick(self, now: float, in_flight: int = 0) -> None:
        """The clock: heartbeats and the close timeout.  Call it at ``deadline``.

        ``in_flight``: bytes the kernel still holds for the peers (sent, not yet
        taken).  While closing, that queue shrinking is progress too.
        """
        if self._next_ping is not None and now >= self._next_ping:
            self._heartbeat_due(now)
        if self._give_up_at is not None and now >= self._give_up_at:
            self._closing_check(now, in_flight)
        self._refresh()

    def _closing_check(self, now: float, in_flight: int) -> None:
        """Every quarter of CLOSE_TIMEOUT while closing: moving, done, or stuck?"""
        first = self._give_up_at is _NOW
        self._give_up_at = now + CLOSE_TIMEOUT / _CHECKS
        moved = self._progressed or in_flight < self._in_flight
        self._progressed = False
        self._in_flight = in_flight
        if first or moved:
            self._quiet_checks = 0
        elif self._all_handed_over() and not in_flight:
            # Only the peers' EOF is missing, and nothing of ours can be lost by
            # closing any more: a clean end, after a moment's wait for that EOF.
            self._move(Trigger.FINISHED)
        else:
            self._quiet_checks += 1
            if self._quiet_checks >= _CHECKS:
                self.counters.close_timed_out = True
                self._move(Trigger.TIMEOUT)

    # -- reports of the I/O layer ------------------------------------------------------

    def client_sent(self, size: int) -> None:
        """The client's socket took ``size`` bytes from the front of ``to_client``."""
        counters = self.counters
        counters.client_bytes_sent += size
        if size:
            self._progressed = True
            _consume(self.to_client, size, self._lent)
            if self._data_payload and counters.client_bytes_sent >= self._data_end:
                counters.payload_bytes_to_client += self._data_payload
                self._data_payload = 0
        if not self.to_client:
            if self.state is _OPEN:  # the common case, without a full refresh
                self.read_target = not self._target & ENDED
                self.read_client = not (self.to_target or self._client & ENDED)
            else:
                self._refresh()

    def target_sent(self, size: int) -> None:
        """The target's socket took ``size`` bytes from the front of ``to_target``."""
        self.counters.target_bytes_sent += size
        if size:
            self._progressed = True
            _consume(self.to_target, size, None)
        if not self.to_target:
            if self.state is _OPEN:  # the common case, without a full refresh
                self.read_client = not (self._client & ENDED
                                        or self._pong_end > self.counters.client_bytes_sent)
            else:
                self._refresh()

    def client_shut(self) -> None:
        """The client's socket was half-closed as ``shut_client`` asked."""
        self._client |= SHUT
        self._refresh()

    def target_shut(self) -> None:
        """The target's socket was half-closed as ``shut_target`` asked."""
        self._target |= SHUT
        self._refresh()

    @property
    def client_connected(self) -> bool:
        """Not known to have left: worth watching for it leaving while it is not read."""
        return not self._client & (EOF | GONE | LEAVING)

    # -- the machine ------------------------------------------------------------------

    def _move(self, trigger: Trigger) -> bool:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            return False
        self.state = new
        if new is State.CLOSED:
            self._finish()
        elif self._give_up_at is None:
            self._give_up_at = _NOW  # the next tick, at once, starts the close timeout
        return True

    def _end(self, reason: str, code: int, by: Party) -> None:
        """Record the first cause of the ending; later ones are consequences."""
        if self.ending is None:
            self.ending = Ending(reason, code, by)

    def _we_close(self, reason: str, code: int, wire_reason: str, by: Party) -> None:
        if self.state is not State.OPEN:
            return
        self._end(reason, code, by)
        self._queue_close(code, wire_reason)
        self._move(Trigger.WE_CLOSE)

    def _on_client_close(self, event: Close) -> None:
        code = event.code if event.code is not None else 1000
        self.counters.close_code_received = event.code
        self._end(f"client sent Close {event.code if event.code is not None else '(no code)'}",
                  code, Party.CLIENT)
        self._queue_close(code, "")  # no-op when ours went first
        self._move(Trigger.CLIENT_CLOSE)

    def _on_violation(self, event: Violation) -> None:
        self._end(f"protocol error: {event.reason}",
                  event.close_code, Party.CLIENT)
        self._queue_close(event.close_code, event.reason)
        self._move(Trigger.VIOLATION)

    def _queue_close(self, code: int, reason: str) -> None:
        if self.counters.close_code_sent is None and not self._client & GONE:
            self.counters.close_code_sent = code
            self._queue_client(self._codec.encode_close(code, reason))

    def _queue_client(self, frame: bytes, frames: int = 1) -> None:
        self.to_client.append(frame)
        self._client_queued += len(frame)
        self.counters.frames_to_client += frames

    def _send_pongs(self, pongs: list[bytes] | None) -> None:
        """The answers to one read's pings, as one piece; the client is not read
        until they are delivered, so a ping flood queues one read's worth at most."""
        if pongs and self.state is State.OPEN:
            self._queue_client(b"".join(pongs), len(pongs))
            self._pong_end = self._client_queued

    def _drop_client_output(self) -> None:
        self.counters.undelivered_to_client += sum(len(piece) for piece in self.to_client)
        self.to_client.clear()
        self._data_payload = 0

    def _heartbeat_due(self, now: float) -> None:
        """Ping; close with 1011 when the last ping got no byte back.

        Judged only after a whole period in which the ping was out (it went to an
        empty queue, or was seen delivered at the previous check) and the client was
        read all along: a pong we chose not to read is not a missing pong.
        """
        self._next_ping = now + self._heartbeat
        if self.state is not State.OPEN:
            self._next_ping = None
            return
        if self._ping_end is not None:
            delivered = self.counters.client_bytes_sent >= self._ping_end
            if delivered and self._ping_was_out and not self._paused_since_ping:
                self._next_ping = None
                self._we_close(f"no pong within {self._heartbeat:g}s", 1011,
                               "heartbeat timeout", Party.SERVER)
                return
            # Not judged yet: watch one more period.
            self._ping_was_out = delivered
            self._paused_since_ping = not self.read_client
            return
        self._ping_was_out = not self.to_client  # the relay sends it right away
        self._queue_client(self._codec.encode_ping(b""))
        self._ping_end = self._client_queued
        self._paused_since_ping = False

    def _refresh(self) -> None:
        """Recompute what the I/O layer should do; move on when a phase is over."""
        state = self.state
        if state is _OPEN:
            self.read_client = read_client = not (
                self.to_target or self._client & ENDED
                or self._pong_end > self.counters.client_bytes_sent)
            self.read_target = not (self.to_client or self._target & ENDED)
            if not read_client and self._ping_end is not None:
                self._paused_since_ping = True
        elif state is State.CLOSED:
            self.read_client = self.read_target = False
            self.shut_client = self.shut_target = False
        else:
            if state is State.CLOSING_BY_CLIENT and not self.to_client:
                self._move(Trigger.ANSWER_SENT)
                state = self.state
            relaying = state is State.CLOSING_BY_US
            client_open = not self._client & ENDED
            target_open = not self._target & ENDED
            # While closing by us the client's data still goes to the target
            # (backpressure as before); otherwise its input is read to the EOF.
            self.read_client = client_open and not (relaying and self.to_target)
            self.read_target = target_open  # dropped: nothing may follow our Close
            self.shut_client = (state is State.DRAINING and not self.to_client
                                and not self._client & (SHUT | GONE))
            self.shut_target = (not relaying and not self.to_target
                                and not self._target & (SHUT | GONE))
            if not client_open and not target_open and self._all_handed_over():
                self._move(Trigger.FINISHED)
        if self.state is State.CLOSED:
            self.read_client = self.read_target = False
            self.shut_client = self.shut_target = False
        self._update_deadline()

    def _all_handed_over(self) -> bool:
        """Draining, and every byte for either side is out and both sides are shut."""
        return (self.state is State.DRAINING and not self.to_client and not self.to_target
                and bool(self._client & (SHUT | GONE)) and bool(self._target & (SHUT | GONE)))

    def _update_deadline(self) -> None:
        next_ping, give_up_at = self._next_ping, self._give_up_at
        if next_ping is None or give_up_at is None:
            self.deadline = give_up_at if next_ping is None else next_ping
        else:
            self.deadline = min(next_ping, give_up_at)

    def _finish(self) -> None:
        self.done = True
        self._next_ping = self._give_up_at = None
        if not self._client & GONE:
            self._drop_client_output()
        if not self._target & GONE:
            self.counters.undelivered_to_target += sum(len(piece) for piece in self.to_target)
            self.to_target.clear()


def _consume(pieces: list[Buffer], size: int, lent: object) -> None:
    """Drop ``size`` sent bytes from the front of ``pieces``; own what stays.

    What stays waits for the socket, and a piece inside the buffer the caller lent
    (the relay's one read buffer, shared by every connection of the process) would
    change under it with the next read: such pieces are copied.
    """
    index = 0
    for piece in pieces:
        length = len(piece)
        if size < length:
            break
        size -= length
        index += 1
    del pieces[:index]
    if not pieces:
        return
    if size:
        pieces[0] = memoryview(pieces[0])[size:]
    if lent is not None:
        for position, piece in enumerate(pieces):
            if type(piece) is memoryview and piece.obj is lent:
                pieces[position] = bytes(piece)
