"""TCP targets behind the proxy under test: sink, source and echo.

Run as ``python scripts/bench_targets.py sink|source|echo``: listens on
127.0.0.1:0, prints ``PORT <n>`` and serves until its standard input closes (so
it never outlives the benchmark that started it).  A process of its own keeps the
targets' work out of the client's GIL.

The byte streams carry their own verification, so the benchmark needs no side
channel and times every transfer end to end:

* sink: the client's first 8 bytes give N (big-endian); the sink reads N bytes,
  hashing them, then answers SHA-256(data) and its byte count (8 bytes).
* source: the client sends N the same way; the source sends N bytes of seeded
  pseudo-random data, then the SHA-256 of exactly what it sent.
* echo: sends back every byte it gets; one epoll loop copes with thousands of
  connections.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import socket
import struct
import sys
import threading
from collections.abc import Callable

#: Header of the sink and source streams: the byte count that follows or is wanted.
LENGTH = struct.Struct(">Q")
DIGEST_SIZE = hashlib.sha256().digest_size
#: Length of the source's repeating pattern: odd, so it never lines up with frames.
POOL_SIZE = (1 << 20) + 7
POOL_SEED = 0x5EED
SEND_CHUNK = 256 << 10
RECV_CHUNK = 1 << 20
#: How long a finished sink or source waits for the client to hang up.
LINGER_SECONDS = 30.0


def pattern() -> bytes:
    """The source's deterministic pseudo-random pattern, repeated to fill N bytes."""
    return random.Random(POOL_SEED).randbytes(POOL_SIZE)


def recv_exact(conn: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes, or ConnectionError if the peer closes first."""
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} header bytes")
        data += chunk
    return data


def linger(conn: socket.socket) -> None:
    """Wait (bounded) for the client to close, so our last bytes are never cut off."""
    conn.settimeout(LINGER_SECONDS)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def serve_sink(conn: socket.socket) -> None:
    """Count and hash N bytes, then answer digest + count."""
    wanted = LENGTH.unpack(recv_exact(conn, LENGTH.size))[0]
    digest = hashlib.sha256()
    buf = bytearray(RECV_CHUNK)
    view = memoryview(buf)
    got = 0
    while got < wanted:
        n = conn.recv_into(view[: min(RECV_CHUNK, wanted - got)])
        if n == 0:
            log(f"sink: client closed after {got} of {wanted} bytes")
            return
        digest.update(view[:n])
        got += n
    conn.sendall(digest.digest() + LENGTH.pack(got))
    linger(conn)


def serve_source(conn: socket.socket, doubled: memoryview) -> None:
    """Send N pattern bytes, then the SHA-256 of what was sent."""
    wanted = LENGTH.unpack(recv_exact(conn, LENGTH.size))[0]
    digest = hashlib.sha256()
    sent = offset = 0
    while sent < wanted:
        chunk = doubled[offset : offset + min(SEND_CHUNK, wanted - sent)]
        conn.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
        offset = (offset + len(chunk)) % POOL_SIZE
    conn.sendall(digest.digest())
    linger(conn)


def log(text: str) -> None:
    """Targets report problems on stderr, which the benchmark keeps in a log file."""
    print(text, file=sys.stderr, flush=True)


def serve_threaded(listener: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    """Accept forever; one thread per connection (sink and source see one at a time)."""

    def run(conn: socket.socket) -> None:
        with conn:
            try:
                handler(conn)
            except OSError as exc:
                log(f"{handler.__name__}: {exc}")

    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=run, args=(conn,), daemon=True).start()


class EchoLoop:
    """A non-blocking epoll echo server: holds thousands of connections in one thread."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, bytes] = {}
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until the process ends."""
        while True:
            for key, events in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif events & selectors.EVENT_WRITE:
                    self._flush(sock)
                else:
                    self._echo(sock)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: report, keep serving the others
                log(f"echo: accept failed: {exc}")
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(conn, selectors.EVENT_READ)

    def _echo(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        self._send(sock, data, waiting=False)

    def _flush(self, sock: socket.socket) -> None:
        """The socket became writable: send what is pending."""
        self._send(sock, self._pending.pop(sock, b""), waiting=True)

    def _send(self, sock: socket.socket, data: bytes, waiting: bool) -> None:
        """Send ``data``; while some is left, wait for writability instead of reading.

        ``waiting`` says whether the socket is registered for writing now, so the
        common case (everything sent at once) costs no extra epoll_ctl call.
        """
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(sock)
            return
        if sent < len(data):
            self._pending[sock] = data[sent:]
            if not waiting:
                self._selector.modify(sock, selectors.EVENT_WRITE)
        elif waiting:
            self._selector.modify(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        self._selector.unregister(sock)
        sock.close()


def exit_when_stdin_closes() -> None:
    """Quit as soon as the benchmark closes our stdin or dies."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str]) -> int:
    """Start the target named by argv[1] and print the port it listens on."""
    if len(argv) != 2 or argv[1] not in ("sink", "source", "echo"):
        print("usage: bench_targets.py sink|source|echo", file=sys.stderr)
        return 2
    kind = argv[1]
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    if kind == "echo":
        EchoLoop(listener).run()
    elif kind == "sink":
        serve_threaded(listener, serve_sink)
    else:
        doubled = memoryview(pattern() * 2)

        def source(conn: socket.socket) -> None:
            serve_source(conn, doubled)

        source.__name__ = "source"
        serve_threaded(listener, source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
