"""Client side of the WebSocket wire for the benchmark: RFC 6455 and Hixie-76.

Written from the RFC and the draft, independently of the ``websockify`` package on
purpose: a benchmark whose client shared code with the server it measures could
hide that code's bugs on both ends of the wire.  Everything here works on plain
blocking sockets and bytes; the asyncio client of the connection test reuses the
request builders and :func:`parse_rfc6455_header`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import socket
import ssl
import struct
from dataclasses import dataclass

#: RFC 6455 section 1.3: the GUID appended to the key before hashing.
RFC6455_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Largest frame or Hixie message the reader accepts; a bigger one means a broken server.
MAX_MESSAGE = 64 << 20
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 16 << 10


class WireError(Exception):
    """The server broke the protocol, refused the handshake, or closed early."""


@dataclass(frozen=True, slots=True)
class Mode:
    """How a client talks to the server: which draft and which payload encoding.

    ``draft`` is "rfc6455" or "hixie76"; ``encoding`` is "binary" (RFC 6455 binary
    frames) or "base64" (text frames carrying base64, as old websockify clients did).
    """

    draft: str
    encoding: str
    #: wss://: the connection speaks TLS first (certificate not verified: the
    #: benchmark made it itself, and both servers get the same one).
    tls: bool = False

    @property
    def label(self) -> str:
        """Short name for tables: "binary", "base64" or "hixie-76" ("tls-binary" over TLS)."""
        name = "hixie-76" if self.draft == "hixie76" else self.encoding
        return f"tls-{name}" if self.tls else name


BINARY = Mode("rfc6455", "binary")
BASE64 = Mode("rfc6455", "base64")
HIXIE76 = Mode("hixie76", "base64")
TLS_BINARY = Mode("rfc6455", "binary", tls=True)

_TLS_CLIENT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_TLS_CLIENT.check_hostname = False
_TLS_CLIENT.verify_mode = ssl.CERT_NONE


# --------------------------------------------------------------------------- frames


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 section 5.3).

    Done with one big-integer XOR rather than numpy so the benchmark needs nothing
    beyond the standard library; it only runs while frames are being pre-built.
    """
    if not payload:
        return b""
    reps = -(-len(payload) // 4)
    stream = (key * reps)[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")
    return value.to_bytes(len(payload), "big")


def rfc6455_frame(payload: bytes, opcode: int, key: bytes) -> bytes:
    """One final, masked client frame (clients must mask every frame)."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = struct.pack(">BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", first, 0x80 | 127, n)
    return head + key + mask_bytes(payload, key)


def hixie_frame(payload: bytes) -> bytes:
    """A Hixie text frame: 0x00, the base64 of ``payload``, 0xFF."""
    return b"\x00" + base64.b64encode(payload) + b"\xff"


def client_frame(mode: Mode, payload: bytes, key: bytes) -> bytes:
    """The bytes a client of ``mode`` sends to deliver ``payload`` as one message."""
    if mode.draft == "hixie76":
        return hixie_frame(payload)
    if mode.encoding == "base64":
        return rfc6455_frame(base64.b64encode(payload), OP_TEXT, key)
    return rfc6455_frame(payload, OP_BINARY, key)


def parse_rfc6455_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int] | None:
    """Parse a frame header at the start of ``data``.

    Returns (fin_and_opcode byte, header length including any mask key, payload
    length, masked flag) or None when ``data`` does not yet hold the whole header.
    """
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    masked = b1 & 0x80
    size = b1 & 0x7F
    hlen = 2
    if size == 126:
        hlen = 4
        if len(data) < hlen:
            return None
        size = int.from_bytes(data[2:4], "big")
    elif size == 127:
        hlen = 10
        if len(data) < hlen:
            return None
        size = int.from_bytes(data[2:10], "big")
    if masked:
        hlen += 4
    if len(data) < hlen:
        return None
    return b0, hlen, size, masked


# ------------------------------------------------------------------------ handshakes


def rfc6455_request(port: int, key: str, protocol: str) -> bytes:
    """The upgrade request of an RFC 6455 client asking for subprotocol ``protocol``."""
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {protocol}",
        f"Origin: http://127.0.0.1:{port}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def rfc6455_accept(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + RFC6455_GUID).digest()).decode()


def new_rfc6455_key(rng: random.Random) -> str:
    """A fresh Sec-WebSocket-Key: base64 of 16 random bytes."""
    return base64.b64encode(rng.randbytes(16)).decode("ascii")


@dataclass(frozen=True, slots=True)
class Hixie76Keys:
    """The two header keys, the 8-byte body and the 16-byte answer they call for."""

    key1: str
    key2: str
    key3: bytes
    answer: bytes


def _hixie76_key(rng: random.Random) -> tuple[str, int]:
    """One Sec-WebSocket-KeyN and its number, built as draft-76 section 4.1 says.

    The key is number*spaces in decimal, with 1-12 random non-digit characters
    and ``spaces`` spaces (never first or last) inserted at random places.
    """
    spaces = rng.randint(1, 12)
    number = rng.randint(0, min(4294967295 // spaces, 2147483647))
    chars = list(str(number * spaces))
    fillers = [chr(c) for c in (*range(0x21, 0x30), *range(0x3A, 0x7F))]
    for _ in range(rng.randint(1, 12)):
        chars.insert(rng.randint(0, len(chars)), rng.choice(fillers))
    for _ in range(spaces):
        chars.insert(rng.randint(1, len(chars) - 1), " ")
    return "".join(chars), number


def new_hixie76_keys(rng: random.Random) -> Hixie76Keys:
    """Fresh keys and the MD5 answer: md5(number1 || number2 || key3), numbers as >I."""
    key1, number1 = _hixie76_key(rng)
    key2, number2 = _hixie76_key(rng)
    key3 = rng.randbytes(8)
    answer = hashlib.md5(struct.pack(">II", number1, number2) + key3).digest()
    return Hixie76Keys(key1, key2, key3, answer)


def hixie76_request(port: int, keys: Hixie76Keys) -> bytes:
    """The draft-76 upgrade request, 8-byte body included.

    Websockify always spoke base64 to Hixie clients; we still name the subprotocol
    as noVNC's old Hixie client did.
    """
    lines = [
        "GET / HTTP/1.1",
        "Upgrade: WebSocket",
        "Connection: Upgrade",
        f"Host: 127.0.0.1:{port}",
        f"Origin: http://127.0.0.1:{port}",
        "Sec-WebSocket-Protocol: base64",
        f"Sec-WebSocket-Key1: {keys.key1}",
        f"Sec-WebSocket-Key2: {keys.key2}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + keys.key3


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of an HTTP response head."""
    text = head.decode("latin-1")
    status_line, *lines = text.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise WireError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def check_rfc6455_response(head: bytes, key: str, protocol: str) -> None:
    """Raise WireError unless ``head`` accepts the upgrade with ``protocol``."""
    status, headers = parse_response_head(head)
    if status != 101:
        raise WireError(f"handshake refused: HTTP {status}")
    if headers.get("sec-websocket-accept") != rfc6455_accept(key):
        raise WireError("bad Sec-WebSocket-Accept")
    chosen = headers.get("sec-websocket-protocol", "")
    if chosen != protocol:
        raise WireError(f"server chose subprotocol {chosen!r}, not {protocol!r}")


def check_hixie76_response(head: bytes) -> None:
    """Raise WireError unless ``head`` is a draft-76 101 answer."""
    status, headers = parse_response_head(head)
    if status != 101:
        raise WireError(f"Hixie-76 handshake refused: HTTP {status}")
    if "sec-websocket-location" not in headers:
        raise WireError("Hixie-76 answer lacks Sec-WebSocket-Location")


def _recv_until(sock: socket.socket, marker: bytes, extra: int) -> tuple[bytes, bytes]:
    """Read until ``marker`` plus ``extra`` bytes; return (head, what followed)."""
    data = b""
    while True:
        end = data.find(marker)
        if end >= 0 and len(data) >= end + len(marker) + extra:
            cut = end + len(marker)
            return data[:cut], data[cut:]
        if len(data) > MAX_HEAD:
            raise WireError("handshake answer too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise WireError("server closed the connection during the handshake")
        data += chunk


def handshake(sock: socket.socket, port: int, mode: Mode, rng: random.Random) -> bytes:
    """Upgrade ``sock`` to a WebSocket speaking ``mode``; return bytes already read past it."""
    if mode.draft == "hixie76":
        keys = new_hixie76_keys(rng)
        sock.sendall(hixie76_request(port, keys))
        head, rest = _recv_until(sock, HEAD_END, 16)
        check_hixie76_response(head)
        if rest[:16] != keys.answer:
            raise WireError("wrong Hixie-76 challenge answer")
        return rest[16:]
    key = new_rfc6455_key(rng)
    sock.sendall(rfc6455_request(port, key, mode.encoding))
    head, rest = _recv_until(sock, HEAD_END, 0)
    check_rfc6455_response(head, key, mode.encoding)
    return rest


def connect(
    port: int, mode: Mode, rng: random.Random, timeout: float
) -> tuple[socket.socket, bytes]:
    """Open a TCP (or TLS) connection to 127.0.0.1:``port`` and upgrade it; bounded by
    ``timeout``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode.tls:
            sock = _TLS_CLIENT.wrap_socket(sock, server_hostname="localhost")
        rest = handshake(sock, port, mode, rng)
    except BaseException:
        sock.close()
        raise
    return sock, rest


# --------------------------------------------------------------------------- reader


class MessageReader:
    """Reads server-to-client messages from a blocking socket and yields their data.

    Data is handed out as memoryviews into one reusable buffer (valid until the
    next call) so the download test does not copy every byte once more in Python.
    Base64 messages are decoded per message, as each is padded on its own.
    """

    def __init__(self, sock: socket.socket, mode: Mode, initial: bytes = b"") -> None:
        self._sock = sock
        self._mode = mode
        self._buf = bytearray(max(4 << 20, len(initial)))
        self._view = memoryview(self._buf)
        self._buf[: len(initial)] = initial
        self._start = 0
        self._end = len(initial)
        self._fragments: list[bytes] = []

    def _fill(self, need: int) -> None:
        """Make at least ``need`` unread bytes contiguous in the buffer, reading as needed."""
        while self._end - self._start < need:
            if self._start + need > len(self._buf):
                self._make_room(need)
            got = self._sock.recv_into(self._view[self._end :])
            if got == 0:
                raise WireError("server closed the connection")
            self._end += got

    def _make_room(self, need: int) -> None:
        """Move unread bytes to the front, in a bigger buffer if ``need`` requires it."""
        if need > MAX_MESSAGE + 16:
            raise WireError(f"message of {need} bytes is too big")
        unread = bytes(self._view[self._start : self._end])
        if need > len(self._buf):
            self._buf = bytearray(need * 2)
            self._view = memoryview(self._buf)
        self._buf[: len(unread)] = unread
        self._start, self._end = 0, len(unread)

    def _take(self, count: int) -> memoryview:
        """Consume ``count`` buffered bytes (already filled) and return them."""
        piece = self._view[self._start : self._start + count]
        self._start += count
        return piece

    def next_data(self) -> memoryview | bytes:
        """The application bytes of the next data frame (binary) or message (base64)."""
        if self._mode.draft == "hixie76":
            return binascii.a2b_base64(self._next_hixie())
        while True:
            opcode, fin, payload = self._next_frame()
            if opcode in (OP_PING, OP_PONG):
                continue
            if opcode == OP_CLOSE:
                raise WireError(f"server sent close {bytes(payload[:2]).hex()}")
            if self._mode.encoding == "binary":
                return payload
            self._fragments.append(bytes(payload))
            if fin:
                text = b"".join(self._fragments)
                self._fragments.clear()
                try:  # lenient: a corrupted byte still fails the digest check
                    return binascii.a2b_base64(text)
                except binascii.Error as exc:
                    raise WireError(f"bad base64 from server: {exc}") from exc

    def _next_frame(self) -> tuple[int, bool, memoryview]:
        """One RFC 6455 frame: (opcode, fin, payload) with any masking undone."""
        self._fill(2)
        parsed = parse_rfc6455_header(self._view[self._start : self._end])
        while parsed is None:
            self._fill(self._end - self._start + 1)
            parsed = parse_rfc6455_header(self._view[self._start : self._end])
        b0, hlen, size, masked = parsed
        if size > MAX_MESSAGE:
            raise WireError(f"frame of {size} bytes is too big")
        self._fill(hlen + size)
        head = self._take(hlen)
        payload = self._take(size)
        if masked:
            payload = memoryview(mask_bytes(bytes(payload), bytes(head[-4:])))
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def _next_hixie(self) -> memoryview:
        """One Hixie text frame's content (between 0x00 and 0xFF)."""
        self._fill(1)
        kind = self._buf[self._start]
        if kind == 0xFF:
            raise WireError("server sent a Hixie close frame")
        if kind != 0x00:
            raise WireError(f"unexpected Hixie frame type 0x{kind:02x}")
        scanned = 1  # relative to self._start, which _fill may move
        while True:
            end = self._buf.find(b"\xff", self._start + scanned, self._end)
            if end >= 0:
                break
            scanned = self._end - self._start
            self._fill(scanned + 1)
        content = self._view[self._start + 1 : end]
        self._start = end + 1
        return content
