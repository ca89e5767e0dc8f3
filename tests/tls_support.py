"""Certificates made by the real ``openssl`` command, and TLS clients and targets for the tests.

:class:`Pki` is a small certificate authority in a directory: a CA, server
certificates for ``localhost``/127.0.0.1 and client certificates with a chosen
common name, all EC P-256 (fast to make).  Nothing here is mocked: the files are
what an operator would give websockify.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

from tests.support import TIMEOUT, TcpServer


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=TIMEOUT)


class Pki:
    """A CA in ``directory`` that issues server and client certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = self.dir / "ca.key"
        self.ca_cert = self.dir / "ca.pem"
        self._serial = 1000
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
                 "-days", "2", "-subj", "/CN=websockify test CA")

    def issue(self, name: str, common_name: str = "localhost", *, server: bool = True,
              key_password: str | None = None) -> tuple[Path, Path]:
        """A certificate signed by the CA, and its key: (cert.pem, key.pem)."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.dir / f"{name}.ext"
        usage = ("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                 if server else "extendedKeyUsage=clientAuth\n")
        ext.write_text(usage)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
        self._serial += 1
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey",
                 str(self.ca_key), "-set_serial", str(self._serial), "-days", "2",
                 "-extfile", str(ext), "-out", str(cert))
        if key_password is not None:
            encrypted = self.dir / f"{name}.encrypted.key"
            _openssl("pkey", "-in", str(key), "-aes256", "-passout", f"pass:{key_password}",
                     "-out", str(encrypted))
            key = encrypted
        return cert, key

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context trusting this CA (and presenting ``cert`` if given)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, trusted by nobody: (cert.pem, key.pem)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return cert, key


def served_certificate(port: int, context: ssl.SSLContext | None = None) -> bytes:
    """The DER certificate a TLS server on 127.0.0.1:``port`` presents now."""
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


class TlsEchoTarget:
    """A TLS echo server on 127.0.0.1 (a thread per connection): the --ssl-target's target."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.handshakes = 0
        self._lock = threading.Lock()
        self._server = TcpServer(self._serve)
        self.port = self._server.port

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate
        with self._lock:
            self.handshakes += 1
        with tls:
            while data := tls.recv(65536):
                tls.sendall(data)

    def close(self) -> None:
        self._server.close()
