"""Upstream's socket-like ``WebSocket`` class (server side), on the sans-I/O core.

A :class:`WebSocket` wraps a connected socket after the opening handshake and
behaves much like an ``ssl.SSLSocket``: ``recv``/``recvmsg`` return application
data, ``send``/``sendmsg`` frame it, and on a non-blocking socket the calls raise
:class:`WebSocketWantReadError` or :class:`WebSocketWantWriteError` when they must
be repeated once the socket is ready.  Frames are parsed and built by the
protocol core (:mod:`websockify.codec_adapter`), never here.

Differences from upstream 0.13, each deliberate:

* Only the server side exists; upstream's ``connect()`` (a client) needs a client
  frame codec, which the protocol core does not have.
* ``recvmsg()`` returns the data one read of the socket completed, which may be
  part of a message or span several: the relay forwards a byte stream, and the
  codec streams payloads instead of holding whole messages.
* A protocol violation is answered with the close code the RFC asks for (1002,
  1007 or 1009) and ends the input at once; the violation is in ``close_code``.
* The socket is closed by :meth:`close` (or its owner), not as a side effect of
  the closing handshake completing.
"""

from __future__ import annotations

import contextlib
import errno
import socket as socket_module
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any

from websockify.codec_adapter import FrameStream
from websockify.errors import HandshakeError
from websockify.protocol import rfc6455, subprotocol
from websockify.protocol.handshake import HandshakeOptions, UpgradeRequest
from websockify.stdlib_http import lower_case_headers

__all__ = ["WebSocket", "WebSocketWantReadError", "WebSocketWantWriteError"]

#: Bytes asked of the socket per read.
RECV_SIZE = 65536
#: The largest client message accepted (close code 1009 beyond), as the gevent server's default.
DEFAULT_MAX_MESSAGE_SIZE = HandshakeOptions().max_message_size
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


class WebSocketWantReadError(ssl.SSLWantReadError):
    """Repeat the call once the socket is readable."""


class WebSocketWantWriteError(ssl.SSLWantWriteError):
    """Repeat the call (with the same arguments) once the socket is writable."""


class WebSocket:
    """A server-side WebSocket connection that behaves like a socket.

    Accept a client with :meth:`accept` (RFC 6455; override
    :meth:`select_subprotocol` to pick a subprotocol), or let the library server do
    the handshake and hand over with :meth:`attach`.  ``fileno``, ``getpeername``,
    ``getsockname``, ``getsockopt``, ``setsockopt``, ``gettimeout``, ``settimeout``
    and ``setblocking`` are the underlying socket's.
    """

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    _SOCKET_METHODS = frozenset((
        "fileno", "getpeername", "getsockname", "getsockopt", "setsockopt",
        "gettimeout", "settimeout", "setblocking",
    ))

    def __init__(self) -> None:
        self._state = "new"
        self.socket: Any = None
        self.client = False
        self.protocol: str | None = None
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self._stream: FrameStream | None = None
        self._messages: deque[bytes] = deque()
        self._send_buffer = bytearray()
        self._previous_sendmsg: bytes | bytearray | memoryview | None = None
        self._sent_close = False
        self._received_close = False
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def __getattr__(self, name: str) -> Any:
        sock = self.__dict__.get("socket")
        if name in WebSocket._SOCKET_METHODS and sock is not None:
            return getattr(sock, name)
        raise AttributeError(f"{type(self).__name__} instance has no attribute {name!r}")

    # -- opening ---------------------------------------------------------------------

    def accept(self, socket: Any, headers: Mapping[str, str] | Any) -> None:
        """Answer a client's RFC 6455 upgrade on ``socket`` (its request already read).

        ``headers`` is the request's header mapping in any letter case.  Raises
        :class:`~websockify.errors.HandshakeError` for a request to refuse, and
        :class:`WebSocketWantWriteError` when the answer could not be sent at once
        (call again with the same arguments).  The Connection header is the HTTP
        layer's business, as in upstream: a missing one is not refused here.
        """
        if self._state == "new":
            lowered = lower_case_headers(headers)
            offered = subprotocol.parse_offer(lowered.pop("sec-websocket-protocol", None))
            lowered.setdefault("connection", "Upgrade")
            upgrade = rfc6455.accept(
                UpgradeRequest("GET", "/", lowered),
                HandshakeOptions(max_message_size=self.max_message_size),
            )
            chosen = self.select_subprotocol(offered) if offered else ""
            if chosen and chosen not in offered:
                raise HandshakeError(f"the server chose subprotocol {chosen!r}, "
                                     "which the client did not offer")
            if offered and not chosen:
                raise HandshakeError("none of the offered subprotocols is supported")
            self.socket = socket
            self.protocol = chosen or None
            self._stream = FrameStream.rfc6455(self.protocol, self.max_message_size)
            self._replay_response(upgrade.response)
            self._state = "flush"
        if self._state == "flush":
            self._flush()
            self._state = "done"
            return
        raise RuntimeError(f"WebSocket.accept() in state {self._state!r}")

    def _replay_response(self, response: bytes) -> None:
        """Send the core's 101 answer through send_response/send_header/end_headers.

        Those three are what a subclass overrides to send through an HTTP handler
        (:class:`websockify.websocketserver.HttpWebSocket`); the chosen subprotocol
        is added here, because the core only speaks binary and base64.
        """
        status, *lines = response.decode("latin-1").split("\r\n")
        _, code, message = status.split(" ", 2)
        self.send_response(int(code), message)
        for line in lines:
            if line:
                name, _, value = line.partition(": ")
                self.send_header(name, value)
        if self.protocol:
            self.send_header("Sec-WebSocket-Protocol", self.protocol)
        self.end_headers()

    def attach(self, socket: Any, stream: FrameStream, buffered: bytes = b"") -> None:
        """Take over a connection whose handshake the caller already answered.

        ``buffered`` is client input that arrived with the handshake (frames the
        HTTP reader took past the request head); it is decoded first.
        """
        self.socket = socket
        self._stream = stream
        self.protocol = stream.subprotocol
        self._state = "done"
        self.attach_buffered(buffered)

    def attach_buffered(self, buffered: bytes) -> None:
        """Decode client input that arrived with the handshake, before any socket read."""
        if buffered:
            self._decode(buffered)

    def select_subprotocol(self, protocols: list[str]) -> str:
        """The subprotocol to answer with, from the client's offer; "" refuses them all.

        Called by :meth:`accept` only when the client offered some.
        """
        return ""

    # -- control messages --------------------------------------------------------------

    def handle_ping(self, data: bytes) -> None:
        """Called for each ping received; answers with a pong."""
        self.pong(data)

    def handle_pong(self, data: bytes) -> None:
        """Called for each pong received; does nothing."""

    # -- receiving ---------------------------------------------------------------------

    def recv(self) -> bytes | None:
        """Application data, or None once the connection is closed (see ``close_code``)."""
        return self.recvmsg()

    def recvmsg(self) -> bytes | None:
        """The data decoded from one read of the socket; None once closed.

        Data received before a Close is returned before None.  Raises
        :class:`WebSocketWantReadError` when nothing is available yet (on a blocking
        socket: when a read carried only control frames).  Keep calling while
        :meth:`pending` is true.
        """
        if self._messages:
            return self._messages.popleft()
        if self._received_close:
            self.flush()
            return None
        data = self._read_socket()
        if not data:
            self._end_abnormally()
            return None
        self._decode(data)
        if self._messages:
            return self._messages.popleft()
        if self._received_close:
            return None
        raise WebSocketWantReadError

    @property
    def input_closed(self) -> bool:
        """True once the peer closed (Close frame, broken frame or end of stream)."""
        return self._received_close

    def pending(self) -> bool:
        """True while decoded data waits to be returned by :meth:`recvmsg`."""
        return bool(self._messages)

    def _read_socket(self) -> bytes:
        assert self.socket is not None, "WebSocket is not connected"
        try:
            data: bytes = self.socket.recv(RECV_SIZE)
        except ssl.SSLWantReadError:
            raise WebSocketWantReadError from None
        except ssl.SSLWantWriteError:
            raise WebSocketWantWriteError from None
        except BlockingIOError:
            raise WebSocketWantReadError from None
        return data

    def _decode(self, data: bytes) -> None:
        received = self._require_stream().feed(data)
        if received.data:
            self._messages.append(b"".join(received.data))
        for payload in received.pings:
            self.handle_ping(payload)
        for payload in received.pongs:
            self.handle_pong(payload)
        if received.close is not None:
            code, reason = received.close
            self._received_close = True
            if code is None:
                self.close_code, self.close_reason = 1005, "No close status code specified by peer"
            else:
                self.close_code, self.close_reason = code, reason
            self._answer_control(self.shutdown, socket_module.SHUT_RDWR, code or 1000, reason)
        elif received.violation is not None:
            code, reason = received.violation
            self._received_close = True
            self.close_code, self.close_reason = code, reason
            self._answer_control(self.shutdown, socket_module.SHUT_RDWR, code, reason)

    def _answer_control(self, send: Any, *args: Any) -> None:
        """Send an automatic Close without raising for a full socket.

        What does not fit stays queued and goes out with the next send or flush.
        """
        with contextlib.suppress(WebSocketWantWriteError, WebSocketWantReadError):
            send(*args)

    def _end_abnormally(self) -> None:
        """The peer's TCP stream ended without a closing handshake."""
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, "Connection closed abnormally"
        self._received_close = self._sent_close = True
        self._send_buffer.clear()

    # -- sending -------------------------------------------------------------------------

    def send(self, data: bytes) -> int:
        """Send data as one binary message (base64 text for base64 clients); returns its length."""
        if not data:
            return 0
        return self.sendmsg(data)

    def sendmsg(self, msg: bytes) -> int:
        """Send ``msg`` as one message; returns its length (0 after a close was sent).

        Raises :class:`WebSocketWantWriteError` when the frame is queued but not yet
        all sent: call again with the same ``msg`` once the socket is writable.
        """
        if not isinstance(msg, bytes | bytearray | memoryview):
            raise TypeError(f"sendmsg() takes bytes, not {type(msg).__name__}")
        if self._sent_close:
            return 0
        if self._previous_sendmsg is not None:
            if self._previous_sendmsg is not msg and self._previous_sendmsg != msg:
                raise ValueError("repeat the sendmsg() that raised WebSocketWantWriteError first")
            self._flush()  # raises again while the frame is not all sent
            self._previous_sendmsg = None
            return len(msg)
        try:
            self._send(self._require_stream().encode_data(msg))
        except WebSocketWantWriteError:
            self._previous_sendmsg = msg
            raise
        return len(msg)

    def ping(self, data: bytes = b"") -> None:
        """Queue a ping and send what the socket takes (nothing for the Hixie drafts).

        Control frames never raise WebSocketWantWriteError: what the socket does not
        take at once waits in the queue (see :attr:`output_pending`) and goes out with
        the next send or :meth:`flush`.
        """
        if not isinstance(data, bytes):
            raise TypeError(f"ping() takes bytes, not {type(data).__name__}")
        stream = self._require_stream()
        if stream.supports_ping and not self._sent_close:
            with contextlib.suppress(WebSocketWantWriteError, WebSocketWantReadError):
                self._send(stream.encode_ping(data))

    def pong(self, data: bytes = b"") -> None:
        """Queue a pong and send what the socket takes, as :meth:`ping` does."""
        if not isinstance(data, bytes):
            raise TypeError(f"pong() takes bytes, not {type(data).__name__}")
        stream = self._require_stream()
        if stream.supports_ping and not self._sent_close:
            with contextlib.suppress(WebSocketWantWriteError, WebSocketWantReadError):
                self._send(stream.encode_pong(data))

    def shutdown(self, how: int | None, code: int = 1000, reason: str | None = None) -> None:
        """Start the closing handshake: send a Close frame; further sends are ignored.

        Keep calling :meth:`recv` to see the peer's answer.  ``how`` is ignored.
        """
        if self._sent_close:
            self._flush()
            return
        if not self._received_close:
            self.close_code, self.close_reason = 1000, "Locally initiated close"
        self._sent_close = True
        self._previous_sendmsg = None
        self._send(self._require_stream().encode_close(code, reason or ""))

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a Close frame if none was sent (best effort) and close the socket."""
        if self.socket is None:
            return
        if self._stream is not None and not self._sent_close:
            with contextlib.suppress(OSError):  # best effort: the peer may be gone
                self.shutdown(socket_module.SHUT_RDWR, code, reason)
        self.socket.close()
        self.socket = None

    @property
    def output_pending(self) -> bool:
        """True while queued frames wait for the socket to take them."""
        return bool(self._send_buffer)

    def _send(self, data: bytes) -> None:
        """Send ``data`` after anything queued; what the socket does not take is queued.

        With nothing queued the bytes go straight to the socket, and only an unsent
        rest is copied into the queue.
        """
        if self._send_buffer:
            self._send_buffer += data
            self._flush()
            return
        view = memoryview(data)
        while view:
            try:
                sent = self._socket_send(view)
            except (WebSocketWantWriteError, WebSocketWantReadError):
                self._send_buffer += view
                raise
            view = view[sent:]

    def _flush(self) -> None:
        """Send queued bytes; raises WebSocketWantWriteError if some must wait."""
        while self._send_buffer:
            del self._send_buffer[:self._socket_send(self._send_buffer)]

    def _socket_send(self, data: bytes | bytearray | memoryview) -> int:
        assert self.socket is not None, "WebSocket is not connected"
        try:
            sent: int = self.socket.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError):
            raise WebSocketWantWriteError from None
        except ssl.SSLWantReadError:
            raise WebSocketWantReadError from None
        except OSError as error:
            if error.errno in _WOULD_BLOCK:
                raise WebSocketWantWriteError from None
            raise
        return sent

    def flush(self) -> bool:
        """Send what the socket takes of the queued frames; True if some still wait."""
        try:
            self._flush()
        except (WebSocketWantWriteError, WebSocketWantReadError):
            return True
        return False

    def _require_stream(self) -> FrameStream:
        if self._stream is None:
            raise RuntimeError("the WebSocket has not been accepted yet")
        return self._stream

    # -- the answer to the handshake (a subclass may send it through an HTTP handler) ------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._send_buffer += f"HTTP/1.1 {code} {message or ''}\r\n".encode("latin-1")

    def send_header(self, keyword: str, value: Any) -> None:
        self._send_buffer += f"{keyword}: {value}\r\n".encode("latin-1")

    def end_headers(self) -> None:
        self._send_buffer += b"\r\n"
