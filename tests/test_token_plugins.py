"""Token plugins against the real things they read: files, a directory of unix sockets,
redis-server, an HTTP API and JWTs made with jwcrypto; then through the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from jwcrypto import jwk, jwt

from tests.bridge_support import echo_roundtrip, recv_bytes, unix_echo_server, wait_exit, ws_connect
from tests.service_support import redis_server, token_api
from tests.support import (
    PLUGIN_PATH,
    TIMEOUT,
    TcpServer,
    echo,
    http_status,
    upgrade,
    wait_until,
    websockify,
)
from tests.test_wsgi_gunicorn import OUR_WORKER, STOCK_WORKER, gunicorn
from tests.tls_support import Pki
from websockify.token_plugins import (
    BaseTokenAPI,
    JSONTokenApi,
    JWTTokenApi,
    ReadOnlyTokenFile,
    TokenFile,
    TokenFileName,
    TokenRedis,
    UnixDomainSocketDirectory,
    parse_source_args,
)


@pytest.mark.parametrize(("source", "fields"), [  # upstream's own table
    ("", [""]), (":", ["", ""]), ("::", ["", "", ""]), ('"', ['"']), ('""', ['""']),
    ('"""', ['"""']), ('"localhost"', ["localhost"]), ('"localhost":', ["localhost", ""]),
    ('"localhost"::', ["localhost", "", ""]), ('"local:host"', ["local:host"]),
    ('"local:host:"pass"', ['"local', "host", "pass"]), ('"local":"host"', ["local", "host"]),
    ('"local":host"', ["local", 'host"']),
    ('localhost:6379:1:pass"word:"my-app-namespace:dev"',
     ["localhost", "6379", "1", 'pass"word', "my-app-namespace:dev"]),
])
def test_parse_source_args(source: str, fields: list[str]) -> None:
    assert parse_source_args(source) == fields


def test_token_file_formats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# a comment\n\nvm1: 10.0.0.1:5901\nvm2:\t[fd00::2]:5902\n"
                      "sock: unix_socket:/run/vnc:1.sock\nbroken line\n  vm3: host3:5903  \n")
    plugin = ReadOnlyTokenFile(str(tokens))
    assert plugin.lookup("vm1") == ["10.0.0.1", "5901"]
    assert plugin.lookup("vm2") == ["fd00::2", "5902"]
    assert plugin.lookup("sock") == ["unix_socket", "/run/vnc:1.sock"]
    assert plugin.lookup("vm3") == ["host3", "5903"]
    assert plugin.lookup("# a comment") is None
    assert plugin.lookup("nobody") is None
    assert "line 6: expected 'token: host:port'" in caplog.text


def test_token_directory_and_reloading_only_on_change(tmp_path: Path) -> None:
    directory = tmp_path / "tokens.d"
    directory.mkdir()
    (directory / "a.conf").write_text("a: host-a:1\n")
    (directory / "b.conf").write_text("b: host-b:2\n")
    read_only, reloading = ReadOnlyTokenFile(str(directory)), TokenFile(str(directory))
    assert read_only.lookup("b") == reloading.lookup("b") == ["host-b", "2"]
    (directory / "c.conf").write_text("c: host-c:3\n")
    (directory / "b.conf").write_text("b: host-B:22\n")
    assert reloading.lookup("c") == ["host-c", "3"]
    assert reloading.lookup("b") == ["host-B", "22"]
    assert read_only.lookup("c") is None  # read once, as upstream
    # Same size and modification time: not read again (the file did not "change").
    stamp = os.stat(directory / "a.conf")
    (directory / "a.conf").write_text("a: host-z:9\n")
    os.utime(directory / "a.conf", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert reloading.lookup("a") == ["host-a", "1"]


def test_token_file_name(tmp_path: Path) -> None:
    (tmp_path / "vm1").write_text("10.0.0.1:5901\n")
    plugin = TokenFileName(str(tmp_path))
    assert plugin.lookup("vm1") == ["10.0.0.1", "5901"]
    assert plugin.lookup("../vm1") == ["10.0.0.1", "5901"]  # only the name counts
    assert plugin.lookup("vm2") is None
    assert plugin.lookup("..") is None
    with pytest.raises(ValueError, match="needs a directory"):
        TokenFileName(str(tmp_path / "vm1"))


def test_unix_socket_directory_stays_inside(tmp_path: Path) -> None:
    socks, sibling = tmp_path / "socks", tmp_path / "socks2"
    socks.mkdir()
    sibling.mkdir()
    servers = [unix_echo_server(socks / "vm1.sock"), unix_echo_server(sibling / "x.sock")]
    (socks / "plain-file").write_text("not a socket")
    (socks / "link.sock").symlink_to(sibling / "x.sock")
    try:
        plugin = UnixDomainSocketDirectory(str(socks))
        assert plugin.lookup("vm1.sock") == ["unix_socket", str(socks / "vm1.sock")]
        # upstream 0.13's string-prefix check lets this reach the sibling socks2/.
        for escape in ("../socks2/x.sock", str(sibling / "x.sock"), "link.sock", "..",
                       "plain-file", "missing.sock", ""):
            assert plugin.lookup(escape) is None, escape
    finally:
        for server in servers:
            server.close()


def test_token_apis_over_http() -> None:
    with token_api() as api:
        api.targets["vm 1/x"] = ("10.0.0.1", 5901)
        plain = BaseTokenAPI(api.url("plain"))
        answered = JSONTokenApi(api.url("json"))
        assert plain.lookup("vm 1/x") == ["10.0.0.1", "5901"]
        assert answered.lookup("vm 1/x") == ["10.0.0.1", 5901]
        assert answered.lookup("unknown") is None
        assert api.requests == ["vm 1/x", "vm 1/x", "unknown"]  # quoted on the way
    for wrong in ("http://127.0.0.1/no-placeholder", "http://127.0.0.1/a%20b/%s"):
        with pytest.raises(ValueError, match="needs one %s"):
            JSONTokenApi(wrong)


@pytest.fixture(scope="module")
def rsa_key() -> jwk.JWK:
    return jwk.JWK.generate(kty="RSA", size=2048)


def make_jwt(key: jwk.JWK, claims: dict[str, object], alg: str = "RS256") -> str:
    token = jwt.JWT(header={"alg": alg}, claims=claims)
    token.make_signed_token(key)
    return str(token.serialize())


def test_jwt_signed_encrypted_and_timed(tmp_path: Path, rsa_key: jwk.JWK) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(rsa_key.export_to_pem())
    private = tmp_path / "private.pem"
    private.write_bytes(rsa_key.export_to_pem(private_key=True, password=None))
    plugin = JWTTokenApi(str(public))
    now = time.time()
    target = {"host": "10.0.0.1", "port": 5901}
    assert plugin.lookup(make_jwt(rsa_key, target)) == ["10.0.0.1", 5901]
    assert plugin.lookup(make_jwt(rsa_key, {**target, "nbf": now - 5, "exp": now + 60}))
    assert plugin.lookup(make_jwt(rsa_key, {**target, "exp": now - 1})) is None
    assert plugin.lookup(make_jwt(rsa_key, {**target, "nbf": now + 60})) is None
    assert plugin.lookup(make_jwt(rsa_key, {**target, "exp": "tomorrow"})) is None
    assert plugin.lookup(make_jwt(jwk.JWK.generate(kty="RSA", size=2048), target)) is None
    assert plugin.lookup("not.a.jwt") is None
    # JWE: encrypted to the key (the private key decrypts), a signed JWT inside.
    inner = make_jwt(rsa_key, target)
    outer = jwt.JWT(header={"alg": "RSA-OAEP-256", "enc": "A256GCM"}, claims=inner)
    outer.make_encrypted_token(rsa_key)
    assert JWTTokenApi(str(private)).lookup(outer.serialize()) == ["10.0.0.1", 5901]
    # A shared secret (HMAC) in the key file, written in base64url as upstream reads it.
    secret = tmp_path / "secret"
    shared = b"correct horse battery staple, 32+ bytes for HS256"
    secret.write_text(jwk.base64url_encode(shared) + "\n")
    hmac_key = jwk.JWK(kty="oct", k=jwk.base64url_encode(shared))
    assert JWTTokenApi(str(secret)).lookup(make_jwt(hmac_key, target, "HS256")) == \
        ["10.0.0.1", 5901]
    with pytest.raises(ValueError, match="No such file"):
        JWTTokenApi(str(tmp_path / "missing.pem"))


def test_redis_values_namespaces_and_sources() -> None:
    with redis_server(password="pa:ss") as server:
        db0, db2 = server.client(), server.client(db=2)
        db0.set("json", json.dumps({"host": "10.0.0.1:5901"}))
        db0.set("plain", " 10.0.0.2:5902 \n")
        db0.set("v6", "[fd00::3]:5903")
        db0.set("garbage", "{not json")
        db2.set("ns1:ns2:tok", "10.0.0.4:5904")
        plugin = TokenRedis(f'127.0.0.1:{server.port}::"pa:ss"')
        assert plugin.lookup("json") == ["10.0.0.1", "5901"]
        assert plugin.lookup("plain") == ["10.0.0.2", "5902"]
        assert plugin.lookup("v6") == ["fd00::3", "5903"]
        assert plugin.lookup("garbage") is None
        assert plugin.lookup("missing") is None
        namespaced = TokenRedis(f'127.0.0.1:{server.port}:2:"pa:ss":"ns1:ns2"')
        assert namespaced.lookup("tok") == ["10.0.0.4", "5904"]
        assert namespaced.lookup("json") is None
    defaults = TokenRedis("localhost")
    assert (defaults._server, defaults._port, defaults._db, defaults._password,
            defaults._namespace) == ("localhost", 6379, 0, None, "")
    for wrong in ("host:port", "host:1:db", "a:1:2:3:4:5", ":6379"):
        with pytest.raises(ValueError):
            TokenRedis(wrong)


# ---------------------------------------------------------------------------
# Through the server


@pytest.fixture
def targets() -> Iterator[tuple[TcpServer, TcpServer]]:
    first, second = TcpServer(echo), TcpServer(echo)
    yield first, second
    first.close()
    second.close()


def greeting_echo(port: int, path: str = "/", **kwargs: object) -> bytes:
    with ws_connect(port, path=path, **kwargs) as ws:  # type: ignore[arg-type]
        ws.send(b"ping")
        return recv_bytes(ws, 4)


def refused_status(port: int, path: str = "/", **kwargs: object) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        ws_connect(port, path=path, **kwargs)  # type: ignore[arg-type]
    return int(refused.value.response.status_code)


def test_token_from_query_cookie_and_path(tmp_path: Path,
                                          targets: tuple[TcpServer, TcpServer]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"one: 127.0.0.1:{targets[0].port}\ntwo: 127.0.0.1:{targets[1].port}\n")
    with websockify(tmp_path, "--token-plugin", "TokenFile", "--token-source", str(tokens),
                    "127.0.0.1:0") as server:
        assert greeting_echo(server.port, "/websockify?token=one") == b"ping"
        assert greeting_echo(server.port, "/websockify",
                             additional_headers={"Cookie": "lang=en; token=two"}) == b"ping"
        assert greeting_echo(server.port, "/vnc/two") == b"ping"
        assert len(targets[0].connections) == 1 and len(targets[1].connections) == 2
        assert refused_status(server.port, "/websockify?token=three") == 403
        assert refused_status(server.port, "/") == 400
        server.wait_for_log(r"127\.0\.0\.1:\d+: handshake refused \(403\): unknown token")
        server.wait_for_log(r"handshake refused \(400\): a token is required")


def test_token_file_edited_while_running(tmp_path: Path,
                                         targets: tuple[TcpServer, TcpServer]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"vm: 127.0.0.1:{targets[0].port}\n")
    with websockify(tmp_path, "--target-config", str(tokens), "127.0.0.1:0") as server, \
            ws_connect(server.port, path="/?token=vm") as flowing:
        tokens.write_text(f"vm: 127.0.0.1:{targets[1].port}\nnew: 127.0.0.1:{targets[0].port}\n")
        assert greeting_echo(server.port, "/?token=new") == b"ping"
        assert greeting_echo(server.port, "/?token=vm") == b"ping"
        assert len(targets[1].connections) == 1  # vm now leads to the second target
        flowing.send(b"still here")
        assert recv_bytes(flowing, 10) == b"still here"


def test_host_token(tmp_path: Path, targets: tuple[TcpServer, TcpServer]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"vm1.example: 127.0.0.1:{targets[0].port}\n")
    with websockify(tmp_path, "--token-plugin", "ReadOnlyTokenFile", "--token-source",
                    str(tokens), "--host-token", "127.0.0.1:0") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            head = upgrade(sock, path="/?token=ignored", host=f"vm1.example:{server.port}")
            assert http_status(head) == 101
        wait_until(lambda: len(targets[0].connections) == 1, "the Host's target to be reached")
        assert refused_status(server.port, "/?token=vm1.example") == 403


def test_unix_socket_tokens_and_escapes(tmp_path: Path) -> None:
    socks = tmp_path / "socks"
    socks2 = tmp_path / "socks2"
    socks.mkdir()
    socks2.mkdir()
    inside, outside = unix_echo_server(socks / "vm1.sock"), unix_echo_server(socks2 / "x.sock")
    try:
        with websockify(tmp_path, "--token-plugin", "UnixDomainSocketDirectory",
                        "--token-source", str(socks), "127.0.0.1:0") as server:
            assert greeting_echo(server.port, "/?token=vm1.sock") == b"ping"
            assert refused_status(server.port, "/?token=../socks2/x.sock") == 403
            assert greeting_echo(server.port, "/?token=vm1.sock") == b"ping"
        assert not outside.connections
    finally:
        inside.close()
        outside.close()


def test_redis_tokens_and_redis_going_down(tmp_path: Path,
                                           targets: tuple[TcpServer, TcpServer]) -> None:
    with redis_server() as redis:
        redis.client().set("ns:json", json.dumps({"host": f"127.0.0.1:{targets[0].port}"}))
        redis.client().set("ns:plain", f"127.0.0.1:{targets[1].port}")
        with websockify(tmp_path, "--token-plugin", "TokenRedis", "--token-source",
                        f"127.0.0.1:{redis.port}:::ns", "127.0.0.1:0") as server:
            assert greeting_echo(server.port, "/?token=json") == b"ping"
            with ws_connect(server.port, path="/?token=plain") as flowing:
                redis.stop()
                assert refused_status(server.port, "/?token=json") == 503
                server.wait_for_log("token plugin TokenRedis failed: ConnectionError")
                flowing.send(b"unaffected")
                assert recv_bytes(flowing, 10) == b"unaffected"


def test_http_token_api_is_cooperative(tmp_path: Path,
                                       targets: tuple[TcpServer, TcpServer]) -> None:
    """A slow answer from the API holds up only the client that waits for it."""
    with token_api() as api:
        api.targets["slow"] = ("127.0.0.1", targets[0].port)
        api.targets["fast"] = ("127.0.0.1", targets[1].port)
        api.gates["slow"] = threading.Event()
        with websockify(tmp_path, "--token-plugin", "JSONTokenApi", "--token-source",
                        api.url("json"), "127.0.0.1:0") as server:
            slow_done = threading.Event()

            def slow_client() -> None:
                assert greeting_echo(server.port, "/?token=slow") == b"ping"
                slow_done.set()

            thread = threading.Thread(target=slow_client)
            thread.start()
            try:
                wait_until(lambda: "slow" in api.requests, "the slow lookup to start")
                assert greeting_echo(server.port, "/?token=fast") == b"ping"
                assert not slow_done.is_set()  # the fast one was served during the wait
            finally:
                api.gates["slow"].set()
                thread.join()
            assert slow_done.is_set()
        # Each connection reached its own token's target, though their lookups overlapped.
        assert len(targets[0].connections) == 1 and len(targets[1].connections) == 1


def test_a_lookup_slower_than_connect_timeout_gets_503(
        tmp_path: Path, targets: tuple[TcpServer, TcpServer]) -> None:
    with token_api() as api:
        api.targets["stuck"] = ("127.0.0.1", targets[0].port)
        api.gates["stuck"] = threading.Event()
        try:
            with websockify(tmp_path, "--connect-timeout", "1", "--token-plugin",
                            "BaseTokenAPI", "--token-source", api.url("plain"),
                            "127.0.0.1:0") as server:
                assert refused_status(server.port, "/?token=stuck") == 503
                server.wait_for_log("token plugin BaseTokenAPI did not answer within 1s")
        finally:
            api.gates["stuck"].set()


def test_jwt_tokens_through_the_server(tmp_path: Path, rsa_key: jwk.JWK,
                                       targets: tuple[TcpServer, TcpServer]) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(rsa_key.export_to_pem())
    good = make_jwt(rsa_key, {"host": "127.0.0.1", "port": targets[0].port,
                              "exp": time.time() + 600})
    expired = make_jwt(rsa_key, {"host": "127.0.0.1", "port": targets[0].port,
                                 "exp": time.time() - 1})
    with websockify(tmp_path, "--token-plugin", "JWTTokenApi", "--token-source", str(public),
                    "127.0.0.1:0") as server:
        assert greeting_echo(server.port, f"/?token={good}") == b"ping"
        assert refused_status(server.port, f"/?token={expired}") == 403
        server.wait_for_log("JWT token refused: expired")


def test_upstream_style_plugin_by_dotted_path(tmp_path: Path,
                                              targets: tuple[TcpServer, TcpServer]) -> None:
    with websockify(tmp_path, "--token-plugin", "tests.upstream_style_plugins.PrefixTokens",
                    "--token-source", "port-", "127.0.0.1:0",
                    env=PLUGIN_PATH) as server:
        assert greeting_echo(server.port, f"/?token=port-{targets[1].port}") == b"ping"
        assert refused_status(server.port, "/?token=other") == 403


@pytest.mark.parametrize(("args", "message"), [
    (["--token-plugin", "NoSuchPlugin"],
     "--token-plugin NoSuchPlugin: websockify.token_plugins has no plugin 'NoSuchPlugin'"),
    (["--token-plugin", "no.such.Module"], "--token-plugin no.such.Module: cannot import"),
    (["--token-plugin", "TokenFile", "--token-source", "/nonexistent"],
     "--token-plugin TokenFile: /nonexistent: no such file"),
    (["--token-plugin", "TokenRedis", "--token-source", "h:port"],
     "--token-plugin TokenRedis: --token-source 'h:port'"),
    (["--token-plugin", "TokenFile"], "--token-source is required"),
    (["--token-source", "x"], "--token-source needs --token-plugin"),
])
def test_plugin_start_up_errors(tmp_path: Path, args: list[str], message: str) -> None:
    with websockify(tmp_path, *args, "127.0.0.1:0", wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert message in server.log()


def test_missing_library_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "redis.py").write_text("raise ImportError('blocked for the test')\n")
    with websockify(tmp_path, "--token-plugin", "TokenRedis", "--token-source", "localhost",
                    "127.0.0.1:0", wait_listening=False,
                    env={"PYTHONPATH": str(blocker)}) as server:
        assert wait_exit(server.proc) == 2
        assert "pip install websockify[redis]" in server.log()


def test_fixed_target_unaffected_by_token_in_url(tmp_path: Path,
                                                 targets: tuple[TcpServer, TcpServer]) -> None:
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{targets[0].port}") as server:
        echo_roundtrip(server.port)
        assert greeting_echo(server.port, "/?token=anything") == b"ping"


@pytest.mark.parametrize("worker", [OUR_WORKER, STOCK_WORKER])
def test_tokens_over_tls_under_gunicorn(tmp_path: Path, worker: str,
                                        targets: tuple[TcpServer, TcpServer]) -> None:
    """gunicorn terminates TLS (--certfile); the application picks the token's target."""
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("server")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"vm: 127.0.0.1:{targets[1].port}\n")
    args = f"--token-plugin TokenFile --token-source {tokens}"
    with gunicorn(tmp_path, worker, args, ("--certfile", str(cert), "--keyfile", str(key))) \
            as server:
        payload = os.urandom(100_000)
        with ws_connect(server.port, path="/?token=vm", tls=pki.client_context()) as ws:
            ws.send(payload)
            assert recv_bytes(ws, len(payload)) == payload
        assert len(targets[1].connections) == 1
        if worker == OUR_WORKER:
            assert refused_status(server.port, "/?token=nope", tls=pki.client_context()) == 403
        else:  # gevent-websocket answered 101 before the application could refuse
            with ws_connect(server.port, path="/?token=nope", tls=pki.client_context()) as ws, \
                    pytest.raises(websockets.exceptions.ConnectionClosedError):
                ws.recv()
            assert ws.close_code == 1008 and ws.close_reason == "unknown token"


def test_plugin_modules_import_no_gevent_and_no_optional_library() -> None:
    """nova imports these under eventlet: neither gevent nor redis/jwcrypto/requests."""
    probe = ("import sys, websockify.token_plugins, websockify.auth_plugins; "
             "print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('gevent', 'redis', 'jwcrypto', 'requests')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=TIMEOUT, check=True)
    assert result.stdout.strip() == "[]"
