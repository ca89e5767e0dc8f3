"""TLS for the built-in server (``wss://``) and to the target (``--ssl-target``).

Clients speak TLS or plain HTTP on the same port, as with upstream: the first
byte a client sends tells them apart (0x16 opens a TLS handshake record, 0x80 an
SSLv2-style hello).  That byte is peeked, not read, in the client's own greenlet
and under the handshake timeout, so a client that stalls or fails its TLS
handshake never holds up anyone else.

:class:`ServerTls` owns the certificate.  It builds a new ``SSLContext`` when the
certificate, key or CA file change on disk (checked at each TLS connection: a few
``stat`` calls against a handshake that costs a thousand times more) and on
SIGHUP.  A connection keeps the context it was accepted with, so replacing the
certificate (a Let's Encrypt renewal) drops no one; a broken replacement is
logged and the previous certificate stays in use.

:class:`TlsSocket` is gevent's SSL socket made to look, to the relay, like a plain
non-blocking socket: "no record yet" is ``BlockingIOError``, ``sendmsg`` writes
its pieces (TLS cannot scatter-gather), and a read takes whole records only (into
a buffer of at least one record, as the relay's is), so that no decrypted byte
sits unseen in OpenSSL's buffer while the relay waits for the kernel to say
"readable".
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Iterable
from typing import Any

import gevent
from gevent import socket
from gevent import ssl as gevent_ssl

from websockify.errors import ConfigError
from websockify.settings import Settings, TargetTlsSettings, TlsSettings

logger = logging.getLogger(__name__)

#: The first byte of a TLS ClientHello record, and of an SSLv2-compatible hello.
TLS_FIRST_BYTES = frozenset((0x16, 0x80))
#: The largest plaintext a TLS record carries (RFC 8446 5.1).
MAX_RECORD = 16384
#: What a plain client gets from a --ssl-only server before it is hung up on.
_PLAIN_REFUSED_BODY = b"This server only speaks TLS: use https:// or wss://.\n"
PLAIN_REFUSED = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_PLAIN_REFUSED_BODY)
) + _PLAIN_REFUSED_BODY

_MIN_VERSIONS = {
    "default": None,
    "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsSocket(gevent_ssl.SSLSocket):
    """An SSL socket the relay can drive like a plain non-blocking socket."""

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if self.timeout != 0.0 or not self._sslobj:
            return int(super().recv_into(buffer, nbytes, flags))
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        try:
            total = got = int(super().recv_into(view))
        except _WOULD_BLOCK:
            raise BlockingIOError("no complete TLS record yet") from None
        # One SSL_read yields at most one record.  After a full record (a bulk
        # sender) read on while another whole record fits, so that more arrives
        # per wake-up; a short record (an interactive message) ends the read without
        # paying for a read that would block.  Either way no decrypted byte is left
        # behind in OpenSSL, where no "readable" event would announce it.
        while got == MAX_RECORD and len(view) - total >= MAX_RECORD:
            try:
                got = int(super().recv_into(view[total:]))
            except (*_WOULD_BLOCK, OSError):
                break  # an error is seen again (or as EOF) at the next read
            total += got
        return total

    def sendmsg(self, buffers: Iterable[Any], *args: Any, **kwargs: Any) -> int:
        """TLS cannot gather: small pieces go out joined, large ones on their own.

        Returns the bytes written, like a partial ``send``.  A write that would
        block returns 0 with part of its data already taken into OpenSSL; the
        relay then retries with the same pieces (and possibly more after them),
        which makes the same first write again, as OpenSSL requires.  Large
        payloads are never copied, so retrying one costs nothing.
        """
        if args or kwargs:
            raise ValueError("ancillary data cannot be sent over TLS")
        sent = 0
        for group in _write_groups(buffers):
            written = int(self.send(group))
            sent += written
            if written < memoryview(group).nbytes:
                break
        return sent


def _write_groups(buffers: Iterable[Any]) -> Iterable[Any]:
    """Runs of pieces that fit one TLS record, joined; larger pieces alone."""
    run: list[Any] = []
    run_size = 0
    for piece in buffers:
        size = memoryview(piece).nbytes
        if run and run_size + size > MAX_RECORD:
            yield run[0] if len(run) == 1 else b"".join(run)
            run, run_size = [], 0
        run.append(piece)
        run_size += size
    if run:
        yield run[0] if len(run) == 1 else b"".join(run)


class _Context(gevent_ssl.SSLContext):
    """gevent's SSLContext, wrapping sockets as TlsSocket (both to clients and targets)."""

    sslsocket_class = TlsSocket


class ServerTls:
    """The server's certificate, reloaded when its files change or on SIGHUP."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._signature = self._files_signature()
        self._context = build_server_context(settings)
        self._failed_signature: tuple[Any, ...] | None = None

    def reload(self, why: str) -> None:
        """Load the certificate files again; keep the old context if they are broken."""
        signature = self._files_signature()
        try:
            context = build_server_context(self.settings)
        except ConfigError as error:
            self._failed_signature = signature
            logger.error("TLS certificate not reloaded (%s), the previous one stays in use: %s",
                         why, error)
            return
        self._context = context
        self._signature = signature
        self._failed_signature = None
        logger.info("TLS certificate reloaded (%s) from %s", why, self.settings.cert)

    def reload_if_changed(self) -> None:
        signature = self._files_signature()
        if signature != self._signature and signature != self._failed_signature:
            self.reload("its files changed")

    def accept(self, sock: socket.socket, peer: str, timeout: float) -> socket.socket | None:
        """The client's socket, TLS-wrapped when it opens with a TLS hello.

        Returns None (and closes the socket) when the client sends nothing, fails
        its handshake, takes longer than ``timeout`` or is plain under --ssl-only.
        """
        tls_sock: socket.socket | None = None
        try:
            with gevent.Timeout(timeout, TimeoutError):
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    logger.debug("%s: closed before sending anything", peer)
                    sock.close()
                    return None
                if first[0] not in TLS_FIRST_BYTES:
                    if not self.settings.ssl_only:
                        return sock
                    logger.info("%s: plain connection refused (--ssl-only)", peer)
                    _refuse_plain(sock)
                    return None
                self.reload_if_changed()
                tls_sock = self._context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False)
                tls_sock.do_handshake()
                return tls_sock
        except TimeoutError:
            logger.info("%s: %s within %gs (--handshake-timeout)", peer,
                        "no TLS handshake" if tls_sock is not None else "sent nothing", timeout)
        except ssl.SSLError as error:
            logger.info("%s: TLS handshake failed: %s", peer, error.reason or error)
        except OSError as error:
            logger.info("%s: TLS handshake failed: %s", peer, error.strerror or error)
        (tls_sock or sock).close()
        return None

    def _files_signature(self) -> tuple[Any, ...]:
        paths = (self.settings.cert, self.settings.key, self.settings.cafile)
        return tuple(_file_identity(path) for path in paths if path)


def log_tls_configuration(settings: Settings) -> None:
    """Say at start-up which TLS is on (upstream says so too, and warns without it)."""
    if settings.tls is None:
        logger.warning("no TLS: certificate self.pem not found (give --cert FILE); "
                       "serving plain ws:// and http:// only")
    else:
        logger.info("TLS with %s: %s", settings.tls.cert,
                    "wss:// and https:// only (--ssl-only)" if settings.tls.ssl_only
                    else "wss:// and ws:// on the same port")
    if settings.target_tls is not None:
        logger.info("TLS to the target%s", "" if settings.target_tls.verify
                    else " without certificate verification (--ssl-target-no-verify)")


def _file_identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def build_server_context(settings: TlsSettings) -> ssl.SSLContext:
    """An SSLContext for clients; raises ConfigError naming the file and the reason."""
    context = _Context(ssl.PROTOCOL_TLS_SERVER)
    # A client may not renegotiate (TLS 1.2): each renegotiation costs the server a
    # handshake, and a write that must wait for one would spin the relay.
    context.options |= ssl.OP_NO_RENEGOTIATION
    minimum = _MIN_VERSIONS[settings.min_version]
    if minimum is not None:
        context.minimum_version = minimum
    if settings.ciphers:
        try:
            context.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {settings.ciphers!r}: no usable cipher") from None
    what = f"--cert {settings.cert}" + (f" --key {settings.key}" if settings.key else "")
    asked_for_password: list[bool] = []

    def no_password() -> bytes:
        # Without --key-password, OpenSSL would prompt on the terminal for one.
        asked_for_password.append(True)
        return b""

    password = settings.key_password if settings.key_password is not None else no_password
    try:
        context.load_cert_chain(settings.cert, settings.key, password)
    except OSError as error:
        if asked_for_password:
            raise ConfigError(f"{what}: the key is encrypted: give --key-password") from None
        if isinstance(error, ssl.SSLError):
            raise ConfigError(f"{what}: cannot load the certificate and key: "
                              f"{error.reason or error}") from None
        raise ConfigError(f"{what}: {error.strerror or error}: "
                          f"{error.filename or settings.cert}") from None
    if settings.verify_client:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_cas(context, settings.cafile, "--cafile", ssl.Purpose.CLIENT_AUTH)
    return context


def target_context(settings: TargetTlsSettings) -> ssl.SSLContext:
    """The SSLContext for --ssl-target: verified (system CAs or a CA file) unless told not."""
    context = _Context(ssl.PROTOCOL_TLS_CLIENT)
    if settings.verify:
        _load_cas(context, settings.cafile, "--ssl-target-cafile", ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_cas(context: ssl.SSLContext, cafile: str | None, option: str,
              purpose: ssl.Purpose) -> None:
    """Trust ``cafile``, or the system's CAs without one."""
    if not cafile:
        context.load_default_certs(purpose)
        return
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as error:
        raise ConfigError(f"{option} {cafile}: not a PEM file of certificates "
                          f"({error.reason or error})") from None
    except OSError as error:
        raise ConfigError(f"{option} {cafile}: {error.strerror or error}") from None


def is_tls(sock: Any) -> bool:
    return isinstance(sock, ssl.SSLSocket | gevent_ssl.SSLSocket)


def prepare_for_relay(sock: Any) -> bytes:
    """Make a client's TLS socket fit for the relay; returns plaintext not yet read.

    After the HTTP reader is done, part of a TLS record may remain decrypted in
    OpenSSL: the kernel no longer reports it readable, so the relay must be handed
    it with the other buffered bytes, or it would wait for it forever.  A socket
    that gevent wrapped itself (gunicorn's --certfile) becomes a TlsSocket: the
    same object and state, with the relay-friendly reads and writes.
    """
    if not is_tls(sock):
        return b""
    if isinstance(sock, gevent_ssl.SSLSocket) and not isinstance(sock, TlsSocket):
        sock.__class__ = TlsSocket
    chunks = []
    with contextlib.suppress(OSError, ValueError):
        while pending := sock.pending():
            chunks.append(sock.recv(pending))
    return b"".join(chunks)


def peer_common_name(sock: Any) -> str | None:
    """The commonName of the client certificate that the handshake verified, if any."""
    if not is_tls(sock):
        return None
    with contextlib.suppress(ValueError, OSError):
        cert = sock.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
    return None


def _refuse_plain(sock: socket.socket) -> None:
    """Tell a plain client it reached a TLS-only port, then hang up without a reset.

    Its unread request would turn close() into a reset that can destroy the answer,
    so the socket is drained briefly after the answer is sent.
    """
    try:
        sock.sendall(PLAIN_REFUSED)
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(1.0, False):
            while sock.recv(65536):
                pass
    except OSError:
        pass
    finally:
        sock.close()
