"""The connection state machine without sockets: literal bytes in, exact bytes and states out.

A fake clock drives heartbeats and the close timeout; "delivering" output means
reporting to the connection that a socket took it, as the relay does.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import client_frame
from tests.test_fuzz_hybi import near_valid_frames
from websockify.protocol.connection import (
    CLOSE_TIMEOUT,
    NO_CLOSE_FRAME,
    TRANSITIONS,
    Connection,
    Ending,
    Party,
    State,
    Trigger,
)
from websockify.protocol.hixie import HixieCodec
from websockify.protocol.hybi import HybiCodec

MASK = bytes.fromhex("37fa213d")
LIMIT = 1 << 20
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def connection(subprotocol: str | None = "binary", heartbeat: float = 0.0,
               limit: int = LIMIT) -> Connection:
    return Connection(HybiCodec(subprotocol, limit), now=0.0, heartbeat=heartbeat)


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return client_frame(opcode, payload, fin=fin, mask=MASK)


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


def take_client(conn: Connection, limit: int | None = None) -> bytes:
    """What the client's socket takes now (all, or at most ``limit`` bytes)."""
    wire = b"".join(bytes(piece) for piece in conn.to_client)
    if limit is not None:
        wire = wire[:limit]
    conn.client_sent(len(wire))
    return wire


def take_target(conn: Connection, limit: int | None = None) -> bytes:
    data = b"".join(bytes(piece) for piece in conn.to_target)
    if limit is not None:
        data = data[:limit]
    conn.target_sent(len(data))
    return data


def shut_both(conn: Connection) -> None:
    """Half-close what the connection asks to, as the relay does."""
    if conn.shut_client:
        conn.client_shut()
    if conn.shut_target:
        conn.target_shut()


# -- relaying, byte for byte -----------------------------------------------------------


def test_rfc_masked_hello_reaches_the_target_and_target_bytes_are_framed() -> None:
    conn = connection()
    conn.client_data(bytes.fromhex("818537fa213d7f9f4d5158"))  # RFC 6455 5.7: "Hello"
    assert take_target(conn) == b"Hello"
    conn.target_data(b"Hi")
    assert take_client(conn) == b"\x82\x02Hi"
    assert conn.state is State.OPEN
    assert (conn.read_client, conn.read_target, conn.done) == (True, True, False)


def test_base64_subprotocol_both_ways() -> None:
    conn = connection("base64")
    conn.client_data(frame(OP_TEXT, b"SGk="))
    assert take_target(conn) == b"Hi"
    conn.target_data(b"\x00\xff")
    assert take_client(conn) == b"\x81\x04AP8="


def test_hixie_both_ways_and_its_close() -> None:
    conn = Connection(HixieCodec(LIMIT), now=0.0, heartbeat=5.0)
    assert conn.deadline is None, "Hixie has no ping: no heartbeat"
    conn.client_data(b"\x00SGk=\xff")
    assert take_target(conn) == b"Hi"
    conn.target_data(b"ok")
    assert take_client(conn) == b"\x00b2s=\xff"
    conn.client_data(b"\xff\x00")
    assert take_client(conn) == b"\xff\x00"
    assert conn.state is State.DRAINING
    assert (conn.counters.frames_from_client, conn.counters.frames_to_client) == (2, 2)


def test_each_side_is_read_only_while_the_output_it_feeds_is_empty() -> None:
    conn = connection()
    conn.client_data(frame(OP_BINARY, b"abcdef"))
    assert not conn.read_client and conn.read_target
    assert take_target(conn, 2) == b"ab"
    assert not conn.read_client
    assert take_target(conn) == b"cdef"
    assert conn.read_client
    conn.target_data(b"x" * 10)
    assert not conn.read_target and conn.read_client
    take_client(conn, 5)
    assert not conn.read_target
    take_client(conn)
    assert conn.read_target


def test_a_read_of_many_tiny_frames_is_one_piece_for_the_target() -> None:
    """One copy per read rather than one sendmsg per 64 frames (or a join per send)."""
    conn = connection()
    conn.client_data(b"".join(frame(OP_BINARY, bytes([n % 256])) for n in range(1000)))
    assert len(conn.to_target) == 1
    assert take_target(conn) == bytes(n % 256 for n in range(1000))


def test_target_bytes_waiting_for_the_client_are_copied_out_of_the_lent_buffer() -> None:
    """The relay lends one read buffer shared by every connection: what a slow client
    has not taken must not change when the buffer is read into again."""
    shared = bytearray(b"A" * 10000)
    conn = connection()
    conn.target_data(memoryview(shared))
    first = take_client(conn, 100)
    shared[:] = b"B" * 10000  # the next read, of another connection
    rest = take_client(conn)
    assert first + rest == b"\x82\x7e\x27\x10" + b"A" * 10000


def test_bytes_before_a_bad_frame_reach_the_target_and_the_close_code_is_one() -> None:
    conn = connection()
    conn.client_data(frame(OP_BINARY, b"good") + frame(OP_BINARY, b"x")[:1] + b"\x00bad")
    assert take_target(conn) == b"good"
    assert take_client(conn) == b"\x88\x1e\x03\xea" + b"client frames must be masked"
    assert conn.state is State.DRAINING
    assert conn.ending == Ending("protocol error: client frames must be masked",
                                 1002, Party.CLIENT)
    # The rest of the client's input is read (to reach its EOF) and dropped.
    conn.client_data(frame(OP_BINARY, b"after"))
    assert conn.to_target == [] and conn.read_client


# -- endings ----------------------------------------------------------------------------


def test_client_close_is_answered_then_both_sides_drain_to_their_eof() -> None:
    conn = connection()
    conn.target_data(b"tail")
    conn.client_data(frame(OP_BINARY, b"last") + close_frame(1000, b"bye"))
    assert conn.state is State.CLOSING_BY_CLIENT
    assert take_target(conn) == b"last"
    assert conn.shut_target, "no more client data: the target gets EOF after the last bytes"
    conn.target_shut()
    assert take_client(conn) == b"\x82\x04tail" + b"\x88\x02\x03\xe8"
    assert conn.state is State.DRAINING
    assert conn.shut_client
    conn.client_shut()
    assert conn.read_client and conn.read_target and not conn.done
    conn.target_eof()
    conn.client_eof()
    assert conn.state is State.CLOSED and conn.done
    assert conn.ending == Ending("client sent Close 1000", 1000, Party.CLIENT)
    counters = conn.counters
    assert (counters.close_code_received, counters.close_code_sent) == (1000, 1000)
    assert (counters.target_bytes_sent, counters.payload_bytes_to_client) == (4, 4)
    assert (counters.frames_from_client, counters.frames_to_client) == (2, 2)
    assert counters.client_bytes_sent == 10
    assert counters.undelivered_to_client == counters.undelivered_to_target == 0


def test_target_eof_sends_close_1000_after_the_data_and_still_relays_to_the_target() -> None:
    conn = connection()
    conn.target_data(b"end")
    conn.target_eof()
    assert conn.state is State.CLOSING_BY_US
    assert take_client(conn) == b"\x82\x03end\x88\x02\x03\xe8"
    conn.client_data(frame(OP_BINARY, b"late"))
    assert take_target(conn) == b"late", "a target that sent EOF may still read"
    assert not conn.shut_target
    conn.client_data(close_frame(1000))
    assert conn.state is State.DRAINING
    assert conn.shut_client and conn.shut_target
    shut_both(conn)
    conn.client_eof()
    assert conn.done
    assert conn.ending == Ending("target closed the connection", 1000, Party.TARGET)


def test_target_reset_is_close_1011_and_pending_target_bytes_are_counted_lost() -> None:
    conn = connection()
    conn.client_data(frame(OP_BINARY, b"doomed"))
    conn.target_lost("Connection reset by peer")
    assert conn.to_target == []
    assert conn.counters.undelivered_to_target == 6
    assert take_client(conn) == b"\x88\x18\x03\xf3target connection lost"
    conn.client_data(frame(OP_BINARY, b"more") + close_frame(1000))
    assert conn.to_target == [] and conn.counters.undelivered_to_target == 10
    assert conn.ending is not None and conn.ending.close_code == 1011


def test_client_eof_without_close() -> None:
    conn = connection()
    conn.client_data(frame(OP_BINARY, b"abc"))
    conn.client_eof()
    assert conn.state is State.DRAINING
    assert conn.ending == Ending("client hung up without a Close", NO_CLOSE_FRAME, Party.CLIENT)
    assert not conn.read_client
    assert take_target(conn) == b"abc", "what the client sent before leaving is delivered"
    assert conn.shut_target and conn.shut_client
    shut_both(conn)
    conn.target_eof()
    assert conn.done and conn.counters.close_code_sent is None


def test_client_reset_drops_its_output_and_counts_it() -> None:
    conn = connection()
    conn.target_data(b"x" * 100)
    conn.client_lost("Connection reset by peer")
    assert conn.to_client == [] and conn.counters.undelivered_to_client == 102
    assert conn.state is State.DRAINING
    assert not conn.shut_client, "nothing is done with a socket that failed"


def test_shutdown_sends_its_code_once() -> None:
    conn = connection()
    conn.shutdown(1001, "server shutting down")
    conn.shutdown(1001, "server shutting down")
    assert take_client(conn) == b"\x88\x16\x03\xe9server shutting down"
    assert conn.ending == Ending("server shutting down", 1001, Party.SERVER)


def test_no_data_frame_follows_our_close() -> None:
    conn = connection()
    conn.shutdown(1001, "bye")
    take_client(conn)
    assert conn.read_target, "the target is still read, to its EOF"
    conn.target_data(b"dropped")
    assert conn.to_client == []


# -- the close timeout counts from the last progress ---------------------------------------


def close_by_target(conn: Connection, size: int) -> None:
    conn.target_data(b"x" * size)
    conn.target_eof()
    conn.tick(0.0)  # closing started: the next tick starts the timeout


def test_a_client_reading_the_tail_slowly_gets_all_of_it() -> None:
    conn = connection()
    close_by_target(conn, 100_000)
    now = 0.0
    received = b""
    while conn.to_client:
        now += CLOSE_TIMEOUT * 0.9
        received += take_client(conn, 1000)
        if conn.deadline is not None and now >= conn.deadline:
            conn.tick(now)
        assert not conn.done, f"given up at {now:.1f}s with progress"
    assert received.endswith(b"\x88\x02\x03\xe8")
    assert conn.counters.payload_bytes_to_client == 100_000


def test_a_client_that_reads_nothing_is_let_go_and_the_loss_is_counted() -> None:
    conn = connection()
    close_by_target(conn, 1000)
    take_client(conn, 10)
    now = 0.0
    while not conn.done:
        assert conn.deadline is not None
        now = conn.deadline
        conn.tick(now)
    assert CLOSE_TIMEOUT <= now <= CLOSE_TIMEOUT * 1.25
    assert conn.counters.close_timed_out
    assert conn.counters.undelivered_to_client == 1004 + 4 - 10
    assert conn.counters.payload_bytes_to_client == 0
    assert conn.ending == Ending("target closed the connection", 1000, Party.TARGET)


def test_bytes_the_kernel_still_sends_count_as_progress() -> None:
    conn = connection()
    close_by_target(conn, 10)
    take_client(conn)
    in_flight = 5000
    for _ in range(20):  # 5 s: the client reads what the kernel holds, slowly
        in_flight -= 100
        assert conn.deadline is not None
        conn.tick(conn.deadline, in_flight)
    assert not conn.done
    for _ in range(4):  # then nothing moves for CLOSE_TIMEOUT
        assert conn.deadline is not None
        conn.tick(conn.deadline, in_flight)
    assert conn.done and conn.counters.close_timed_out


def run_clock(conn: Connection, until: float) -> float:
    """Tick at each deadline up to ``until``; returns the time of the last tick."""
    now = 0.0
    while conn.deadline is not None and conn.deadline <= until and not conn.done:
        now = max(now, conn.deadline)
        conn.tick(now)
    return now


def test_a_client_leaving_behind_a_stalled_target_is_given_up() -> None:
    """FIN seen while the client was not read: its bytes still go to the target while
    the target takes them; once nothing moves for the close timeout, it is let go."""
    conn = connection()
    conn.client_data(frame(OP_BINARY, b"abcdef"))
    conn.client_leaving("client hung up without a Close")
    assert not conn.client_connected and conn.deadline is not None
    conn.tick(0.0)
    run_clock(conn, 1.0)
    take_target(conn, 2)  # the target takes a little at 1 s: progress
    run_clock(conn, 1.0 + CLOSE_TIMEOUT - 0.01)
    assert not conn.done
    ended = run_clock(conn, 10.0)
    assert conn.done and conn.counters.close_timed_out
    assert 1.0 + CLOSE_TIMEOUT <= ended <= 1.0 + CLOSE_TIMEOUT * 1.25
    assert conn.counters.undelivered_to_target == 4
    assert conn.ending == Ending("client hung up without a Close", NO_CLOSE_FRAME, Party.CLIENT)


def test_a_drained_connection_waits_a_moment_for_the_eof_then_ends_cleanly() -> None:
    """Everything delivered and taken, only the client's EOF missing: a clean end
    within half a second or so, not a timeout."""
    conn = connection()
    conn.client_data(close_frame(1000))
    take_client(conn)
    shut_both(conn)
    conn.target_eof()
    assert conn.state is State.DRAINING and conn.deadline is not None
    ended = run_clock(conn, 10.0)
    assert conn.done and not conn.counters.close_timed_out
    assert ended <= CLOSE_TIMEOUT / 2


# -- control frames ----------------------------------------------------------------------


def test_ping_is_answered_and_the_client_is_not_read_until_the_pong_is_out() -> None:
    conn = connection()
    conn.client_data(frame(OP_PING, b"p1"))
    assert not conn.read_client
    assert take_client(conn, 2) == b"\x8a\x02"
    assert not conn.read_client
    assert take_client(conn) == b"p1"
    assert conn.read_client


def test_a_ping_flood_queues_one_reads_worth_of_pongs_in_one_piece() -> None:
    conn = connection()
    conn.client_data(frame(OP_PING, b"") * 10_000)
    assert len(conn.to_client) == 1 and len(conn.to_client[0]) == 20_000
    assert not conn.read_client and conn.counters.frames_to_client == 10_000


def test_pings_after_our_close_are_not_answered() -> None:
    conn = connection()
    conn.shutdown(1001, "")
    take_client(conn)
    conn.client_data(frame(OP_PING, b"late"))
    assert conn.to_client == []


# -- heartbeat (fake clock) ----------------------------------------------------------------


def test_heartbeat_pings_and_a_missing_pong_closes_with_1011() -> None:
    conn = connection(heartbeat=1.0)
    assert conn.deadline == 1.0
    conn.tick(1.0)
    assert take_client(conn) == b"\x89\x00"
    conn.client_data(frame(OP_PONG))
    conn.tick(2.0)
    assert take_client(conn) == b"\x89\x00", "answered: the next ping"
    conn.tick(3.0)
    assert take_client(conn) == b"\x88\x13\x03\xf3heartbeat timeout"
    assert conn.ending == Ending("no pong within 1s", 1011, Party.SERVER)


def test_any_byte_from_the_client_is_a_sign_of_life() -> None:
    conn = connection(heartbeat=1.0)
    conn.tick(1.0)
    take_client(conn)
    conn.client_data(frame(OP_BINARY, b"busy")[:3])  # not even a whole frame
    conn.tick(2.0)
    assert conn.state is State.OPEN


def test_no_pong_is_judged_while_the_client_was_not_read() -> None:
    """The pong sits unread because output to a slow target is pending: not a dead client."""
    conn = connection(heartbeat=1.0)
    conn.client_data(frame(OP_BINARY, b"x" * 100))  # the target takes nothing yet
    conn.tick(1.0)
    take_client(conn)
    conn.tick(2.0)
    conn.tick(3.0)
    assert conn.state is State.OPEN and not conn.read_client
    take_target(conn)  # the target reads again
    conn.client_data(frame(OP_PONG))
    conn.tick(4.0)
    assert conn.state is State.OPEN


def test_a_pause_then_a_whole_silent_period_read_is_judged() -> None:
    conn = connection(heartbeat=1.0)
    conn.client_data(frame(OP_BINARY, b"x"))
    conn.tick(1.0)
    take_client(conn)
    take_target(conn)  # read again from here on, and nothing comes
    conn.tick(2.0)
    assert conn.state is State.OPEN, "paused during that period: not judged"
    conn.tick(3.0)
    assert conn.state is State.CLOSING_BY_US


def test_a_ping_is_judged_a_whole_period_after_it_was_delivered() -> None:
    conn = connection(heartbeat=1.0)
    conn.target_data(b"y" * 10)  # the client reads nothing: the ping waits behind it
    conn.tick(1.0)
    conn.tick(2.0)
    conn.tick(3.0)
    assert conn.state is State.OPEN
    take_client(conn)  # at 3.9 s: the data and the ping
    conn.tick(4.0)
    assert conn.state is State.OPEN, "delivered 0.1 s ago: no time to answer yet"
    conn.tick(5.0)
    assert conn.state is State.CLOSING_BY_US


# -- the state table -----------------------------------------------------------------------


def test_every_state_but_closed_can_end_and_closed_is_final() -> None:
    reachable = {State.OPEN}
    for (state, _), new in TRANSITIONS.items():
        if state in reachable:
            reachable.add(new)
    assert reachable == set(State)
    assert not [key for key in TRANSITIONS if key[0] is State.CLOSED]
    for state in State:
        if state not in (State.OPEN, State.CLOSED):
            assert (state, Trigger.TIMEOUT) in TRANSITIONS


# -- any split of the same input gives the same outputs ----------------------------------


def run(stream: bytes, cuts: list[int], subprotocol: str | None) -> tuple[object, ...]:
    """Feed ``stream`` cut at ``cuts``, delivering all output after each piece."""
    conn = connection(subprotocol, limit=300)
    to_target = b""
    to_client = b""
    for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)], strict=True):
        if conn.read_client:
            conn.client_data(stream[start:end])
        else:  # the relay reads only once the output is out: same bytes, later
            to_target += take_target(conn)
            to_client += take_client(conn)
            conn.client_data(stream[start:end])
        to_target += take_target(conn)
        to_client += take_client(conn)
    ending = conn.ending
    code = ending.close_code if ending is not None else None
    counters = conn.counters
    return (code, conn.state, to_target if code != 1007 else None,
            to_client if code != 1007 else None,
            counters.client_bytes_received, counters.frames_from_client)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=near_valid_frames(),
       subprotocol=st.sampled_from(["binary", None, "base64"]))
def test_any_split_gives_the_same_outputs(data: st.DataObject, stream: bytes,
                                          subprotocol: str | None) -> None:
    """The close code, state, bytes each way (up to a 1007's bad bytes, which depend on
    the reads) and counters do not depend on how TCP cut the client's bytes."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert run(stream, cuts, subprotocol) == run(stream, [], subprotocol)


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_ping_cut_anywhere_gets_the_same_pong(cut: int) -> None:
    stream = frame(OP_BINARY, b"data") + frame(OP_PING, b"ping!") + frame(OP_BINARY, b"more")
    assert run(stream, [cut], "binary") == run(stream, [], "binary")


# -- every transition of the table, driven through the inputs --------------------------


def in_state(state: State) -> Connection:
    """A connection brought to ``state`` through its inputs only."""
    conn = connection()
    if state is State.CLOSING_BY_US:
        conn.shutdown(1001, "bye")
    elif state is State.CLOSING_BY_CLIENT:
        conn.target_data(b"waiting")  # our answer waits behind it
        conn.client_data(close_frame(1000))
    elif state is State.DRAINING:
        conn.client_data(close_frame(1000))
        take_client(conn)
    assert conn.state is state
    return conn


def trigger(conn: Connection, what: Trigger) -> None:
    if what is Trigger.WE_CLOSE:
        conn.shutdown(1001, "bye")
    elif what is Trigger.CLIENT_CLOSE:
        conn.client_data(close_frame(1000))
    elif what is Trigger.VIOLATION:
        conn.client_data(b"\x82\x00")  # unmasked
    elif what is Trigger.CLIENT_GONE:
        conn.client_eof()
    elif what is Trigger.ANSWER_SENT:
        take_client(conn)
    elif what is Trigger.FINISHED:
        take_client(conn)
        take_target(conn)
        shut_both(conn)
        conn.client_eof()
        conn.target_eof()
    else:
        assert what is Trigger.TIMEOUT
        if conn.state is State.OPEN:
            conn.client_data(frame(OP_BINARY, b"stuck"))  # the target takes nothing
            conn.client_leaving("client hung up without a Close")
        run_clock(conn, 60.0)


@pytest.mark.parametrize(("start", "what", "end"),
                         [(start, what, end) for (start, what), end in TRANSITIONS.items()],
                         ids=lambda value: getattr(value, "name", ""))
def test_each_transition_of_the_table_happens_through_the_inputs(
        start: State, what: Trigger, end: State) -> None:
    conn = in_state(start)
    trigger(conn, what)
    assert conn.state is end
    assert conn.done is (end is State.CLOSED)
