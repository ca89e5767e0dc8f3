"""The measurements: upload, download, round trip and simultaneous connections.

Each one talks to a server already started in front of the right target and
returns a dict of metric name -> value.  Every transferred byte is verified;
any mismatch raises :class:`MeasureError` rather than producing a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import socket
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import bench_wire as wire
from bench_procs import RunningServer, progress, tree_cpu_seconds, tree_memory
from bench_targets import DIGEST_SIZE, LENGTH

T = TypeVar("T")
MIB = 1 << 20
#: One socket operation may stall this long before the measurement is abandoned.
IO_TIMEOUT = 60.0
#: Distinct pre-built (and pre-masked) frames the upload cycles through.
UPLOAD_VARIANTS = 4
RTT_PAYLOAD = 64
RTT_WARMUP = 100
CONN_PAYLOAD = 32
#: Connection attempts in flight at once; the rest queue in the client.
CONN_CONCURRENCY = 100
CONN_OPEN_TIMEOUT = 15.0
CONN_ECHO_TIMEOUT = 15.0
#: Bound on each whole phase (opening all, echoing on all) of the connection test.
CONN_PHASE_TIMEOUT = 240.0


class MeasureError(Exception):
    """A measurement failed: wrong bytes, a refused mode, a stalled server."""


def _rng(tag: str) -> random.Random:
    """Seeded randomness, so every run sends the same bytes."""
    return random.Random(f"websockify-bench-{tag}")


def _close(sock: socket.socket, mode: wire.Mode) -> None:
    """Say goodbye properly (close frame), then drop the socket; never blocks long."""
    goodbye = b"\xff\x00" if mode.draft == "hixie76" else wire.rfc6455_frame(
        struct.pack(">H", 1000), wire.OP_CLOSE, b"\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(goodbye)
    sock.close()


def _open(server: RunningServer, mode: wire.Mode) -> tuple[socket.socket, wire.MessageReader]:
    try:
        sock, rest = wire.connect(server.port, mode, _rng("handshake"), IO_TIMEOUT)
    except (OSError, wire.WireError) as exc:
        raise MeasureError(f"{mode.label} handshake failed: {exc}") from exc
    return sock, wire.MessageReader(sock, mode, rest)


def _read_exactly(reader: wire.MessageReader, count: int) -> bytes:
    """Collect ``count`` bytes of message data, across messages if need be."""
    data = b""
    while len(data) < count:
        data += bytes(reader.next_data())
    if len(data) != count:
        raise MeasureError(f"expected {count} bytes, got {len(data)}")
    return data


# --------------------------------------------------------------------------- upload


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """Pre-built frames for one upload and the digest the sink must report."""

    header: bytes
    frames: tuple[bytes, ...]
    full_frames: int
    last: bytes
    digest: bytes


@functools.lru_cache(maxsize=4)
def upload_plan(mode: wire.Mode, total: int) -> UploadPlan:
    """Build (once per mode and size) the frames that carry ``total`` bytes.

    Base64 modes carry 48 KiB per message so the frame on the wire is 64 KiB, like
    the binary one.  The expected digest is computed here, outside the timing.
    """
    chunk = 48 << 10 if mode.encoding == "base64" else 64 << 10
    rng = _rng(f"upload-{mode.label}")
    payloads = [rng.randbytes(chunk) for _ in range(UPLOAD_VARIANTS)]
    frames = tuple(wire.client_frame(mode, p, rng.randbytes(4)) for p in payloads)
    full, rest = divmod(total, chunk)
    digest = hashlib.sha256()
    for i in range(full):
        digest.update(payloads[i % UPLOAD_VARIANTS])
    tail = payloads[full % UPLOAD_VARIANTS][:rest]
    digest.update(tail)
    last = wire.client_frame(mode, tail, rng.randbytes(4)) if rest else b""
    header = wire.client_frame(mode, LENGTH.pack(total), rng.randbytes(4))
    return UploadPlan(header, frames, full, last, digest.digest())


def measure_upload(server: RunningServer, mode: wire.Mode, total: int) -> dict[str, float]:
    """Send ``total`` bytes to the sink; time until the sink's verified receipt arrives."""
    plan = upload_plan(mode, total)
    sock, reader = _open(server, mode)
    try:
        start = time.perf_counter()
        sock.sendall(plan.header)
        frames = plan.frames
        for i in range(plan.full_frames):
            sock.sendall(frames[i % UPLOAD_VARIANTS])
        if plan.last:
            sock.sendall(plan.last)
        receipt = _read_exactly(reader, DIGEST_SIZE + LENGTH.size)
        elapsed = time.perf_counter() - start
    except (OSError, wire.WireError) as exc:
        raise MeasureError(f"upload {mode.label}: {exc}") from exc
    finally:
        _close(sock, mode)
    count = LENGTH.unpack(receipt[DIGEST_SIZE:])[0]
    if count != total or receipt[:DIGEST_SIZE] != plan.digest:
        raise MeasureError(f"upload {mode.label}: sink got {count} bytes, digest mismatch")
    return {"mibps": total / MIB / elapsed}


# ------------------------------------------------------------------------- download


def measure_download(server: RunningServer, mode: wire.Mode, total: int) -> dict[str, float]:
    """Ask the source for ``total`` bytes; hash them as they come; compare digests."""
    request = wire.client_frame(mode, LENGTH.pack(total), _rng("download").randbytes(4))
    sock, reader = _open(server, mode)
    digest = hashlib.sha256()
    got = 0
    trailer = b""
    try:
        start = time.perf_counter()
        sock.sendall(request)
        while got < total:
            data = reader.next_data()
            take = min(len(data), total - got)
            digest.update(data[:take])
            got += take
            trailer += bytes(data[take:])
        while len(trailer) < DIGEST_SIZE:
            trailer += bytes(reader.next_data())
        elapsed = time.perf_counter() - start
    except (OSError, wire.WireError) as exc:
        raise MeasureError(f"download {mode.label}: {exc} after {got} bytes") from exc
    finally:
        _close(sock, mode)
    if trailer != digest.digest():
        raise MeasureError(f"download {mode.label}: digest mismatch")
    return {"mibps": total / MIB / elapsed}


# ------------------------------------------------------------------------ round trip


def measure_rtt(server: RunningServer, mode: wire.Mode, count: int) -> dict[str, float]:
    """Echo a small message ``count`` times, one at a time; p50 and p99 in µs."""
    rng = _rng("rtt")
    payloads = [rng.randbytes(RTT_PAYLOAD) for _ in range(16)]
    frames = [wire.client_frame(mode, p, rng.randbytes(4)) for p in payloads]
    sock, reader = _open(server, mode)
    samples: list[int] = []
    try:
        for i in range(RTT_WARMUP + count):
            k = i % len(frames)
            start = time.perf_counter_ns()
            sock.sendall(frames[k])
            reply = reader.next_data()
            if len(reply) != RTT_PAYLOAD:
                reply = bytes(reply) + _read_exactly(reader, RTT_PAYLOAD - len(reply))
            samples.append(time.perf_counter_ns() - start)
            if reply != payloads[k]:
                raise MeasureError(f"round trip {i}: echo differs from the request")
    except (OSError, wire.WireError) as exc:
        raise MeasureError(f"round trip: {exc}") from exc
    finally:
        _close(sock, mode)
    timed = sorted(samples[RTT_WARMUP:])
    return {
        "p50": timed[len(timed) // 2] / 1000,
        "p99": timed[min(len(timed) - 1, (len(timed) * 99) // 100)] / 1000,
    }


# ---------------------------------------------------------------------- connections


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_async(port: int, index: int) -> Stream:
    """One RFC 6455 connection, handshake checked; closes itself if cancelled."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = wire.new_rfc6455_key(_rng(f"conn-{index}"))
        writer.write(wire.rfc6455_request(port, key, "binary"))
        head = await reader.readuntil(wire.HEAD_END)
        wire.check_rfc6455_response(head, key, "binary")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _echo_async(stream: Stream, index: int) -> None:
    """One verified echo on an open connection; raises on any difference."""
    reader, writer = stream
    payload = struct.pack(">I", index) + _rng(f"echo-{index}").randbytes(CONN_PAYLOAD - 4)
    writer.write(wire.rfc6455_frame(payload, wire.OP_BINARY, payload[:4]))
    got = b""
    while len(got) < CONN_PAYLOAD:
        head = await reader.readexactly(2)
        extra = {126: 2, 127: 8}.get(head[1] & 0x7F, 0) + (4 if head[1] & 0x80 else 0)
        head += await reader.readexactly(extra)
        parsed = wire.parse_rfc6455_header(head)
        assert parsed is not None
        b0, _, size, masked = parsed
        body = await reader.readexactly(size)
        if masked:
            body = wire.mask_bytes(body, head[-4:])
        if b0 & 0x0F in (wire.OP_BINARY, wire.OP_CONTINUATION):
            got += body
        elif b0 & 0x0F == wire.OP_CLOSE:
            raise wire.WireError("closed")
    if got != payload:
        raise wire.WireError("echo differs")


async def _bounded(tasks: list[asyncio.Task[T]], timeout: float) -> list[T]:
    """Results of ``tasks`` that finished within ``timeout``; the others are cancelled."""
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    return [t.result() for t in tasks if t in done and t.exception() is None]


async def _hold(server: RunningServer, total: int) -> dict[str, float]:
    gate = asyncio.Semaphore(CONN_CONCURRENCY)

    async def open_one(i: int) -> tuple[int, Stream] | None:
        async with gate:
            try:
                return i, await asyncio.wait_for(_open_async(server.port, i), CONN_OPEN_TIMEOUT)
            except (OSError, EOFError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                    wire.WireError):
                return None

    async def echo_one(i: int, stream: Stream) -> int | None:
        async with gate:
            try:
                await asyncio.wait_for(_echo_async(stream, i), CONN_ECHO_TIMEOUT)
            except (OSError, EOFError, asyncio.TimeoutError, wire.WireError):
                return None
            return i

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(open_one(i)) for i in range(total)]
    opened = await _bounded(tasks, CONN_PHASE_TIMEOUT)
    open_seconds = time.perf_counter() - start
    streams = dict(r for r in opened if r is not None)
    try:
        echoes = [asyncio.ensure_future(echo_one(i, s)) for i, s in streams.items()]
        ok = sum(1 for r in await _bounded(echoes, CONN_PHASE_TIMEOUT) if r is not None)
        memory = tree_memory(server.pid)
    finally:
        for _, writer in streams.values():
            writer.close()
    per_conn = max(ok, 1)
    return {
        "held": float(ok),
        "rss": max(0, memory.rss_kib - server.baseline.rss_kib) / per_conn if ok else float("nan"),
        "pss": max(0, memory.pss_kib - server.baseline.pss_kib) / per_conn if ok else float("nan"),
        "open_s": open_seconds,
        "processes": float(memory.processes),
    }


def measure_tls_setup(server: RunningServer, mode: wire.Mode, total: int,
                  workers: int = 16) -> dict[str, float]:
    """Open and close ``total`` connections, ``workers`` at a time; connections per second.

    Each one completes its handshake (TLS and WebSocket, for a TLS mode) before it
    says goodbye, so the rate is what a server sustains for clients arriving in a crowd.
    """
    def open_and_close(_: int) -> None:
        sock, _reader = _open(server, mode)
        _close(sock, mode)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(open_and_close, range(total)):
            pass
    return {"rate": total / (time.perf_counter() - start)}


def measure_connections(server: RunningServer, total: int) -> dict[str, float]:
    """Open ``total`` connections at once, echo once on each, weigh the server.

    Memory is the server's whole process tree (upstream forks per connection) minus
    its idle baseline, per connection that passed the echo.
    """
    return asyncio.run(_hold(server, total))


# -------------------------------------------------------------------- setup rate


#: Connections the setup test keeps between connect() and their first echo.
SETUP_IN_FLIGHT = 1000
#: Fresh keys the setup test cycles through (a key costs the client a SHA-1 to check).
SETUP_KEYS = 64
#: Bytes echoed through each new connection: setup ends when they come back.
SETUP_PAYLOAD = 16
#: One connection's setup (connect, upgrade, first echo) may take this long.
SETUP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class SetupPlan:
    """What one connection of the setup test sends and expects; built before timing."""

    request: bytes
    key: str
    frame: bytes
    payload: bytes
    close: bytes


def setup_plans(port: int) -> list[SetupPlan]:
    """A few distinct (key, echo) pairs; connection ``i`` uses plan ``i % len``."""
    rng = _rng("setup")
    plans = []
    close = wire.rfc6455_frame(struct.pack(">H", 1000), wire.OP_CLOSE, b"\x00\x00\x00\x00")
    for _ in range(SETUP_KEYS):
        key = wire.new_rfc6455_key(rng)
        payload = rng.randbytes(SETUP_PAYLOAD)
        plans.append(SetupPlan(wire.rfc6455_request(port, key, "binary"), key,
                               wire.rfc6455_frame(payload, wire.OP_BINARY, rng.randbytes(4)),
                               payload, close))
    return plans


class _SetupProtocol(asyncio.Protocol):
    """One connection: send the upgrade, check the 101, echo once, say Close, hang up.

    A bare asyncio protocol rather than streams: the client must stay far cheaper
    per connection than the servers it measures.
    """

    def __init__(self, plan: SetupPlan, done: asyncio.Future[None]) -> None:
        self._plan = plan
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._data = b""
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._plan.request)

    def data_received(self, data: bytes) -> None:
        self._data += data
        try:
            if not self._upgraded:
                end = self._data.find(wire.HEAD_END)
                if end < 0:
                    return
                cut = end + len(wire.HEAD_END)
                wire.check_rfc6455_response(self._data[:cut], self._plan.key, "binary")
                self._data = self._data[cut:]
                self._upgraded = True
                assert self._transport is not None
                self._transport.write(self._plan.frame)
            self._check_echo()
        except wire.WireError as exc:
            self._finish(exc)

    def _check_echo(self) -> None:
        parsed = wire.parse_rfc6455_header(self._data)
        if parsed is None:
            return
        b0, hlen, size, _masked = parsed
        if len(self._data) < hlen + size:
            return
        if b0 & 0x0F != wire.OP_BINARY or self._data[hlen:hlen + size] != self._plan.payload:
            raise wire.WireError(f"bad echo: opcode {b0 & 0x0F}, {size} bytes")
        assert self._transport is not None
        self._transport.write(self._plan.close)
        self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(
                exc or wire.WireError("server closed before the echo came back"))


async def _setup_run(port: int, total: int, in_flight: int, budget: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    plans = setup_plans(port)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    next_index = 0
    start = time.perf_counter()
    stop_launching = start + budget

    async def connect_and_echo(plan: SetupPlan) -> None:
        done: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _SetupProtocol(plan, done), "127.0.0.1", port)
        try:
            await done
        except BaseException:
            transport.abort()  # a failed or stalled connection is dropped at once
            raise

    async def one(plan: SetupPlan) -> None:
        began = time.perf_counter()
        try:
            await asyncio.wait_for(connect_and_echo(plan), SETUP_TIMEOUT)
        except (OSError, asyncio.TimeoutError, wire.WireError) as exc:
            errors[type(exc).__name__ + (f": {exc}" if str(exc) else "")] += 1
            return
        latencies.append(time.perf_counter() - began)

    async def worker() -> None:
        nonlocal next_index
        while next_index < total and time.perf_counter() < stop_launching:
            index = next_index
            next_index += 1
            await one(plans[index % len(plans)])

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    if not latencies:
        raise MeasureError(f"no connection was set up: {errors.most_common(1)}")
    # A connection that failed or timed out took at least SETUP_TIMEOUT as far as
    # its user could tell: counting it so keeps a struggling server's percentiles honest.
    latencies.extend([SETUP_TIMEOUT] * sum(errors.values()))
    latencies.sort()
    ok = len(latencies) - sum(errors.values())
    result = {
        "rate": ok / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000,
        "ok": float(ok),
        "failed": float(sum(errors.values())),
    }
    if errors:
        text, count = errors.most_common(1)[0]
        progress(f"  {result['failed']:.0f} setups failed, most often "
                 f"({count} times): {text[:160]}")
    return result


def measure_setup(server: RunningServer, total: int, in_flight: int,
                  budget: float) -> dict[str, float]:
    """Set up ``total`` connections, ``in_flight`` at a time: rate and latency.

    Each connection's time runs from its connect() to the echo of its first
    message: TCP accept, the upgrade, the target connect and one relayed round
    trip.  No new connection starts after ``budget`` seconds (a slow server then
    gets fewer), and the rate counts the time the last ones took to finish.  The
    server's CPU time per connection is the steadier figure on a busy machine.
    """
    cpu_before = tree_cpu_seconds(server.pid)
    result = asyncio.run(_setup_run(server.port, total, in_flight, budget))
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    result["cpu"] = cpu * 1e6 / result["ok"] if result["ok"] else float("nan")
    return result
