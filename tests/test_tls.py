"""TLS end to end: wss:// and ws:// on one port, --ssl-only, client certificates,
certificate reload, --ssl-target, and start-up errors.

Certificates come from ``openssl`` (tests.tls_support.Pki); the clients are
python-websockets and raw ``ssl`` sockets; the server is a real subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import websockets

from tests.bridge_support import echo_roundtrip, recv_bytes, wait_exit, ws_connect
from tests.service_support import free_loopback_port
from tests.support import (
    OP_BINARY,
    TIMEOUT,
    FrameReader,
    TcpServer,
    client_frame,
    http_header,
    http_status,
    raw_request,
    read_http_head,
    upgrade,
    wait_until,
    websockify,
)
from tests.test_hixie_server import HixieClient, frame
from tests.tls_support import Pki, TlsEchoTarget, der_of, self_signed, served_certificate
from websockify import cli
from websockify.errors import ConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server")


def tls_args(cert: tuple[Path, Path]) -> list[str]:
    return ["--cert", str(cert[0]), "--key", str(cert[1])]


def echo_over(port: int, tls: ssl.SSLContext | None, payload: bytes) -> None:
    with ws_connect(port, tls=tls) as ws:
        ws.send(payload)
        assert recv_bytes(ws, len(payload)) == payload


def test_wss_and_ws_share_the_port(tmp_path: Path, echo_target: TcpServer, pki: Pki,
                                   server_cert: tuple[Path, Path]) -> None:
    with websockify(tmp_path, *tls_args(server_cert), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        echo_over(server.port, pki.client_context(), b"x" * 300_000)  # many TLS records
        echo_over(server.port, None, b"plain")
        assert "wss:// and ws:// on the same port" in server.log()


def test_frame_in_the_handshake_record_is_not_stranded(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        server_cert: tuple[Path, Path]) -> None:
    """Upgrade and a 10 kB frame in one TLS record: the HTTP reader takes 8 KiB of it,
    the rest stays decrypted in OpenSSL, where no "readable" event will announce it."""
    payload = os.urandom(10_000)
    with websockify(tmp_path, *tls_args(server_cert), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw, \
            pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
        request = (f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {'A' * 22}==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        tls.sendall(request + client_frame(OP_BINARY, payload))  # < 16 KiB: one record
        assert http_status(read_http_head(tls)) == 101
        reader, echoed = FrameReader(tls), b""
        while len(echoed) < len(payload):
            echoed += reader.read_frame()[2]
        assert echoed == payload


def test_hixie_over_tls_says_wss_in_its_location(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        server_cert: tuple[Path, Path]) -> None:
    with websockify(tmp_path, *tls_args(server_cert), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        for draft, prefix in ((76, "Sec-"), (75, "")):
            client = HixieClient(server.port, draft, tls=pki.client_context())
            try:
                assert client.upgraded, client.head
                location = client.header(f"{prefix}WebSocket-Location")
                assert location == f"wss://127.0.0.1:{server.port}/websockify?token=x"
                # Send, then read: one thread only, as an SSL socket requires.
                client.send(frame(b"over tls"))
                assert client.read_payload(8) == b"over tls"
            finally:
                client.close()
        plain = HixieClient(server.port, 76)
        try:
            location = plain.header("Sec-WebSocket-Location")
            assert location == f"ws://127.0.0.1:{server.port}/websockify?token=x"
        finally:
            plain.close()


def test_ssl_only_refuses_plain_clients(tmp_path: Path, echo_target: TcpServer, pki: Pki,
                                        server_cert: tuple[Path, Path]) -> None:
    with websockify(tmp_path, "--ssl-only", *tls_args(server_cert), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        status, _, body = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400 and b"only speaks TLS" in body
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            ws_connect(server.port)
        assert refused.value.response.status_code == 400
        echo_over(server.port, pki.client_context(), b"tls still served")
        server.wait_for_log("plain connection refused \\(--ssl-only\\)")


def test_stalled_and_broken_handshakes_never_block_others(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        server_cert: tuple[Path, Path]) -> None:
    # 3 s: long enough for the served clients' own handshakes on a loaded machine.
    with websockify(tmp_path, "--handshake-timeout", "3", *tls_args(server_cert),
                    "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        garbage = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        garbage.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        try:
            for _ in range(3):
                echo_over(server.port, pki.client_context(), b"served meanwhile")
                echo_over(server.port, None, b"plain too")
            for sock in (stalled, silent, garbage):  # each is dropped within the timeout
                assert_hung_up(sock)
            server.wait_for_log("no TLS handshake within 3s")
            server.wait_for_log("sent nothing within 3s")
            server.wait_for_log("TLS handshake failed: [A-Z_]+")
        finally:
            for sock in (stalled, silent, garbage):
                sock.close()


def assert_hung_up(sock: socket.socket) -> None:
    """The server closes ``sock`` (after at most a TLS alert) within the timeout."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def test_200_wss_clients_at_once(tmp_path: Path, echo_target: TcpServer, pki: Pki,
                                 server_cert: tuple[Path, Path]) -> None:
    """200 TLS clients handshake together, all stay open, then each echoes.

    The clients are raw: each connection is used by one thread only.  (python-
    websockets' sync client reads in a thread of its own while the caller writes,
    and OpenSSL does not allow one SSL object to be used by two threads at once;
    measured here, about one connection in two thousand then loses its request,
    which this test would count against the server.)
    """
    context = pki.client_context()
    barrier = threading.Barrier(200, timeout=TIMEOUT * 3)

    def one_client(index: int) -> str:
        """"ok", or what went wrong for this client (all of them are reported)."""
        payload = f"client {index}".encode()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT * 3) \
                    as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
                status = http_status(upgrade(tls))
                if status != 101:
                    return f"client {index}: HTTP {status}"
                barrier.wait()  # all 200 are open at the same time
                tls.sendall(client_frame(OP_BINARY, payload))
                echoed = FrameReader(tls).read_frame()[2]
                return "ok" if echoed == payload else f"client {index}: got {echoed!r}"
        except Exception as error:
            barrier.abort()
            return f"client {index}: {type(error).__name__}: {error}"

    with websockify(tmp_path, *tls_args(server_cert), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            ThreadPoolExecutor(200) as pool:
        outcomes = list(pool.map(one_client, range(200)))
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    causes = [failure for failure in failures if "BrokenBarrierError" not in failure]
    assert not failures, (causes or failures)[:5]


@pytest.fixture
def replaceable_cert(tmp_path: Path, pki: Pki) -> tuple[Path, Path]:
    """Certificate files in a directory of their own that the test may overwrite."""
    first = pki.issue("first")
    cert, key = tmp_path / "live" / "cert.pem", tmp_path / "live" / "key.pem"
    cert.parent.mkdir()
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    return cert, key


def replace_files(live: tuple[Path, Path], new: tuple[Path, Path]) -> None:
    """Replace as certbot and cp do: key and certificate, one file after the other."""
    for source, destination in ((new[1], live[1]), (new[0], live[0])):
        staged = destination.with_suffix(".tmp")
        shutil.copy(source, staged)
        staged.replace(destination)


def test_certificate_replaced_without_dropping_a_connection(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        replaceable_cert: tuple[Path, Path]) -> None:
    cert, key = replaceable_cert
    with websockify(tmp_path, "--cert", str(cert), "--key", str(key), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        first_der = served_certificate(server.port)
        assert first_der == der_of(cert)
        with ws_connect(server.port, tls=pki.client_context()) as flowing:
            flowing.send(b"before")
            assert recv_bytes(flowing, 6) == b"before"
            renewed = pki.issue("renewed")
            replace_files(replaceable_cert, renewed)
            wait_until(lambda: served_certificate(server.port) == der_of(renewed[0]),
                       "the renewed certificate to be served")
            flowing.send(b"after the renewal")  # the old connection keeps flowing
            assert recv_bytes(flowing, 17) == b"after the renewal"
            echo_over(server.port, pki.client_context(), b"new client")
        server.wait_for_log("TLS certificate reloaded \\(its files changed\\)")


def test_sighup_reloads_and_a_broken_certificate_keeps_the_old_one(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        replaceable_cert: tuple[Path, Path]) -> None:
    cert, key = replaceable_cert
    with websockify(tmp_path, "--cert", str(cert), "--key", str(key), "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        before = served_certificate(server.port)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS certificate reloaded \\(SIGHUP\\)")
        assert server.proc.poll() is None
        cert.write_text("not a certificate\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS certificate not reloaded \\(SIGHUP\\)")
        assert served_certificate(server.port) == before  # also after the file check
        echo_over(server.port, pki.client_context(), b"still the old certificate")


def test_client_certificates_with_verify_client(
        tmp_path: Path, echo_target: TcpServer, pki: Pki,
        server_cert: tuple[Path, Path]) -> None:
    alice = pki.issue("alice", "alice", server=False)
    bob = pki.issue("bob", "bob", server=False)
    stranger_pki = Pki(tmp_path / "stranger")
    stranger = stranger_pki.issue("mallory", "alice", server=False)
    with websockify(tmp_path, *tls_args(server_cert), "--verify-client",
                    "--cafile", str(pki.ca_cert), "--auth-plugin", "ClientCertCNAuth",
                    "--auth-source", "alice carol", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        echo_over(server.port, pki.client_context(alice), b"alice is let in")
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            ws_connect(server.port, tls=pki.client_context(bob))
        assert refused.value.response.status_code == 403
        # A certificate from another CA (even with CN alice) fails the handshake; with
        # TLS 1.3 the client learns it at its first read.
        for refused_context in (pki.client_context(stranger), pki.client_context()):
            with pytest.raises((ssl.SSLError, OSError, websockets.exceptions.WebSocketException)):
                echo_over(server.port, refused_context, b"x")
        server.wait_for_log("TLS handshake failed: (CERTIFICATE_VERIFY_FAILED|PEER_DID_NOT)")
        # Forged CN headers, in any case, count for nothing.
        for name in ("SSL_CLIENT_S_DN_CN", "ssl_client_s_dn_cn", "Ssl-Client-S-Dn-Cn"):
            with pytest.raises(websockets.exceptions.InvalidStatus) as forged:
                ws_connect(server.port, tls=pki.client_context(bob),
                           additional_headers={name: "alice"})
            assert forged.value.response.status_code == 403
        echo_over(server.port, pki.client_context(alice), b"and again")


def test_ssl_target_verifies_the_target(tmp_path: Path, pki: Pki,
                                        server_cert: tuple[Path, Path]) -> None:
    trusted = TlsEchoTarget(pki.issue("vnc"))
    untrusted = TlsEchoTarget(self_signed(tmp_path, "vnc-self-signed"))
    try:
        with websockify(tmp_path, "--ssl-target", "--ssl-target-cafile", str(pki.ca_cert),
                        "127.0.0.1:0", f"localhost:{trusted.port}") as server:
            echo_roundtrip(server.port, b"through TLS to the target")
        with websockify(tmp_path, "--ssl-target", "127.0.0.1:0",
                        f"localhost:{untrusted.port}") as server:
            with ws_connect(server.port) as ws, \
                    pytest.raises(websockets.exceptions.ConnectionClosedError):
                ws.recv()
            assert ws.close_code == 1011
            assert "certificate verify failed: self-signed" in (ws.close_reason or "")
            server.wait_for_log("TLS to target localhost:\\d+ failed: certificate verify failed")
        with websockify(tmp_path, "--ssl-target", "--ssl-target-no-verify",
                        "127.0.0.1:0", f"localhost:{untrusted.port}") as server:
            echo_roundtrip(server.port, b"self-signed target accepted")
            assert "without certificate verification" in server.log()
    finally:
        trusted.close()
        untrusted.close()


def test_encrypted_key_needs_its_password(tmp_path: Path, echo_target: TcpServer, pki: Pki) -> None:
    cert, key = pki.issue("locked", key_password="s3cret")
    target = f"127.0.0.1:{echo_target.port}"
    with websockify(tmp_path, "--cert", str(cert), "--key", str(key), "--key-password",
                    "s3cret", "127.0.0.1:0", target) as server:
        echo_over(server.port, pki.client_context(), b"unlocked")
    with websockify(tmp_path, "--cert", str(cert), "--key", str(key), "127.0.0.1:0", target,
                    wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert "give --key-password" in server.log()
    with websockify(tmp_path, "--cert", str(cert), "--key", str(key), "--key-password",
                    "wrong", "127.0.0.1:0", target, wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert "cannot load the certificate and key" in server.log()


@pytest.mark.parametrize(("args", "message"), [
    (["--cert", "/nonexistent/cert.pem"], "--cert /nonexistent/cert.pem: No such file"),
    (["--ssl-only"], "--ssl-only needs a certificate"),
    (["--cafile", "ca.pem"], "--cafile needs"),
    (["--ssl-target-no-verify"], "need --ssl-target"),
    (["--ssl-target", "--ssl-target-cafile", "/nonexistent/ca.pem"],
     "--ssl-target-cafile /nonexistent/ca.pem: No such file"),
])
def test_tls_configuration_errors_stop_at_start(tmp_path: Path, args: list[str],
                                                message: str) -> None:
    with websockify(tmp_path, *args, "127.0.0.1:0", "127.0.0.1:5900",
                    wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert message in server.log()


def test_unreadable_certificate_is_a_start_up_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with websockify(tmp_path, "--cert", str(bogus), "127.0.0.1:0", "127.0.0.1:5900",
                    wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert f"--cert {bogus}: cannot load the certificate" in server.log()


def test_without_self_pem_plain_only_with_a_warning(tmp_path: Path,
                                                   echo_target: TcpServer) -> None:
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        echo_roundtrip(server.port)
        assert "WARNING no TLS: certificate self.pem not found" in server.log()
        # A TLS hello to a plain-only server is answered as the bad request it is.
        head = raw_request(server.port, b"\x16\x03\x01\x00\x05hello\r\n\r\n")[1]
        assert http_status(head) == 400


@pytest.fixture
def novnc_web() -> Iterator[Path]:
    web = Path("/usr/share/novnc")
    if not (web / "vnc.html").exists():
        pytest.skip("Debian's novnc package is not installed")
    yield web


def test_novnc_proxy_command_line(tmp_path: Path, echo_target: TcpServer, pki: Pki,
                                  server_cert: tuple[Path, Path], novnc_web: Path) -> None:
    """The command line noVNC's utils/novnc_proxy builds: options after the positionals."""
    combined = tmp_path / "self.pem"  # novnc_proxy passes one file holding cert and key
    combined.write_text(server_cert[0].read_text() + server_cert[1].read_text())
    with websockify(tmp_path, "--web", str(novnc_web), "--cert", str(combined),
                    "127.0.0.1:0", f"localhost:{echo_target.port}", "--heartbeat", "30",
                    "--idle-timeout", "600", "--timeout", "600") as server:
        echo_over(server.port, pki.client_context(), b"RFB 003.008\n")
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw, \
                pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /vnc.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = read_http_head(tls)
            assert http_status(head) == 200
            assert (http_header(head, "Content-Type") or "").startswith("text/html")


def test_the_real_novnc_proxy_script(tmp_path: Path, echo_target: TcpServer, pki: Pki,
                                     server_cert: tuple[Path, Path], novnc_web: Path) -> None:
    """noVNC's own launcher finds this websockify on PATH and starts it with --cert."""
    script = novnc_web / "utils" / "novnc_proxy"
    combined = tmp_path / "self.pem"
    combined.write_text(server_cert[0].read_text() + server_cert[1].read_text())
    port = free_loopback_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with (tmp_path / "novnc_proxy.log").open("wb") as log:
        proxy = subprocess.Popen(
            [str(script), "--listen", f"127.0.0.1:{port}", "--vnc",
             f"127.0.0.1:{echo_target.port}", "--cert", str(combined), "--heartbeat", "30"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_until(lambda: "listening on 127.0.0.1:" in (tmp_path / "novnc_proxy.log").read_text(),
                   "novnc_proxy's websockify to listen")
        assert f"Using installed websockify at {Path(sys.executable).parent}/websockify" in \
            (tmp_path / "novnc_proxy.log").read_text()
        echo_over(port, pki.client_context(), b"RFB 003.008\n")
    finally:
        proxy.send_signal(signal.SIGTERM)  # its trap stops websockify
        proxy.wait(TIMEOUT)
    wait_until(lambda: "SIGTERM received" in (tmp_path / "novnc_proxy.log").read_text(),
               "websockify to be stopped by novnc_proxy")


@pytest.mark.parametrize(("option", "client_max", "accepted"), [
    ("tlsv1_3", ssl.TLSVersion.TLSv1_2, False),
    ("tlsv1_3", ssl.TLSVersion.TLSv1_3, True),
    ("tlsv1_2", ssl.TLSVersion.TLSv1_2, True),
])
def test_ssl_version_sets_the_lowest_version(
        tmp_path: Path, echo_target: TcpServer, pki: Pki, server_cert: tuple[Path, Path],
        option: str, client_max: ssl.TLSVersion, accepted: bool) -> None:
    context = pki.client_context()
    context.maximum_version = client_max
    with websockify(tmp_path, *tls_args(server_cert), "--ssl-version", option,
                    "--ssl-ciphers", "ECDHE+AESGCM", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        if accepted:
            echo_over(server.port, context, b"agreed")
        else:
            with pytest.raises(ssl.SSLError):
                served_certificate(server.port, context)
            server.wait_for_log("TLS handshake failed: (UNSUPPORTED_PROTOCOL|NO_PROTOCOLS)")


def test_unusable_cipher_list_is_a_start_up_error(tmp_path: Path,
                                                  server_cert: tuple[Path, Path]) -> None:
    with websockify(tmp_path, *tls_args(server_cert), "--ssl-ciphers", "NO-SUCH-CIPHER",
                    "127.0.0.1:0", "127.0.0.1:5900", wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert "--ssl-ciphers 'NO-SUCH-CIPHER': no usable cipher" in server.log()


def test_tls_options_are_the_wsgi_servers_business() -> None:
    for args in (["--cert", "x.pem"], ["--ssl-only"], ["--verify-client"]):
        with pytest.raises(ConfigError, match="TLS is the WSGI server's"):
            cli.parse([*args, "localhost:5900"], for_wsgi=True)
    settings = cli.parse(["--ssl-target", "localhost:5900"], for_wsgi=True)
    assert settings.target_tls is not None and settings.target_tls.verify


def test_default_self_pem_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               server_cert: tuple[Path, Path]) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.parse(["6080", "localhost:5900"]).tls is None
    (tmp_path / "self.pem").write_text(server_cert[0].read_text() + server_cert[1].read_text())
    tls = cli.parse(["6080", "localhost:5900"]).tls
    assert tls is not None and tls.cert == str(tmp_path / "self.pem") and tls.key is None
