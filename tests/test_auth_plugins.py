"""Auth plugins and --origin: the plugins' own answers, then the server's HTTP refusals."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import websockets

from tests.bridge_support import echo_roundtrip, wait_exit, ws_connect
from tests.support import PLUGIN_PATH, TcpServer, http_header, raw_request, websockify
from websockify.auth_plugins import (
    AuthenticationError,
    BasicHTTPAuth,
    ClientCertCNAuth,
    ExpectOrigin,
    InvalidOriginError,
)

ALADDIN = "Basic " + base64.b64encode(b"Aladdin:open sesame").decode()


def refusal(plugin: object, headers: dict[str, str]) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as refused:
        plugin.authenticate(headers, "localhost", "1234")  # type: ignore[attr-defined]
    return refused.value


def test_basic_http_auth_answers() -> None:
    plugin = BasicHTTPAuth("Aladdin:open sesame")
    plugin.authenticate({"Authorization": ALADDIN}, "localhost", "1234")
    missing = refusal(plugin, {})
    assert missing.code == 401
    assert missing.headers == {"WWW-Authenticate": 'Basic realm="Websockify"'}
    wrong = "Basic " + base64.b64encode(b"Aladdin:sesame street").decode()
    assert refusal(plugin, {"Authorization": wrong}).code == 401
    # upstream 0.13 crashes on malformed base64; here each is a 403.
    for malformed in ("Basic xxxxxxxxxxxxxxxxxxxxxxxxxxxx", "Basic !!!not-base64", "Basic abc",
                      "Bearer abc", "Basic " + base64.b64encode(b"no colon").decode()):
        assert refusal(plugin, {"Authorization": malformed}).code == 403, malformed
    with pytest.raises(ValueError, match="user:password"):
        BasicHTTPAuth(None)


def test_expect_origin_and_client_cert_cn() -> None:
    origins = ExpectOrigin("https://a.example https://b.example")
    origins.authenticate({"Origin": "https://b.example"}, None, None)
    wrong = refusal(origins, {"Origin": "https://evil.example"})
    assert isinstance(wrong, InvalidOriginError) and wrong.code == 403
    assert wrong.actual_origin == "https://evil.example"
    assert isinstance(refusal(origins, {}), InvalidOriginError)
    names = ClientCertCNAuth("alice carol")
    names.authenticate({"SSL_CLIENT_S_DN_CN": "carol"}, None, None)
    assert refusal(names, {"SSL_CLIENT_S_DN_CN": "bob"}).code == 403
    assert refusal(names, {}).code == 403


def refused(port: int, path: str = "/", **kwargs: object) -> websockets.http11.Response:
    with pytest.raises(websockets.exceptions.InvalidStatus) as error:
        ws_connect(port, path=path, **kwargs)  # type: ignore[arg-type]
    return error.value.response


def test_basic_auth_through_the_server(tmp_path: Path, echo_target: TcpServer) -> None:
    with websockify(tmp_path, "--auth-plugin", "BasicHTTPAuth", "--auth-source",
                    "Aladdin:open sesame", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        challenge = refused(server.port)
        assert challenge.status_code == 401
        assert challenge.headers["WWW-Authenticate"] == 'Basic realm="Websockify"'
        assert refused(server.port, additional_headers={
            "Authorization": "Basic !!!"}).status_code == 403
        with ws_connect(server.port, additional_headers={"Authorization": ALADDIN}) as ws:
            ws.send(b"open")
            assert ws.recv() == b"open"
        assert len(echo_target.connections) == 1  # refused clients never reached the target
        server.wait_for_log(r"127\.0\.0\.1:\d+: handshake refused \(401\): Unauthorized")


def test_web_auth_guards_the_files(tmp_path: Path, echo_target: TcpServer) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>secret page</p>\n")
    with websockify(tmp_path, "--web", str(web), "--web-auth", "--auth-plugin", "BasicHTTPAuth",
                    "--auth-source", "Aladdin:open sesame", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server:
        status, head, body = raw_request(
            server.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 401 and b"secret" not in body
        assert http_header(head, "WWW-Authenticate") == 'Basic realm="Websockify"'
        status, _, body = raw_request(
            server.port, b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: " + ALADDIN.encode() + b"\r\n\r\n")
        assert status == 200 and b"secret page" in body


def test_origin_option_and_expect_origin_plugin(tmp_path: Path, echo_target: TcpServer) -> None:
    target = f"127.0.0.1:{echo_target.port}"
    for args in (["--origin", "https://good.example", "--origin", "https://also.example"],
                 ["--auth-plugin", "ExpectOrigin", "--auth-source",
                  "https://good.example https://also.example"]):
        with websockify(tmp_path, *args, "127.0.0.1:0", target) as server:
            for origin in ("https://good.example", "https://also.example"):
                with ws_connect(server.port, origin=origin) as ws:
                    ws.send(b"hello")
                    assert ws.recv() == b"hello"
            assert refused(server.port, origin="https://evil.example").status_code == 403
            assert refused(server.port).status_code == 403  # no Origin at all


def test_upstream_style_auth_plugin_by_dotted_path(tmp_path: Path,
                                                   echo_target: TcpServer) -> None:
    with websockify(tmp_path, "--auth-plugin", "tests.upstream_style_plugins.TeapotAuth",
                    "--auth-source", "xyzzy", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}",
                    env=PLUGIN_PATH) as server:
        teapot = refused(server.port, additional_headers={"X-Magic": "wrong"})
        assert teapot.status_code == 418
        assert teapot.headers["X-Teapot"] == "short and stout"
        with ws_connect(server.port, additional_headers={"X-Magic": "xyzzy"}) as ws:
            ws.send(b"magic")  # the plugin saw the target's host and port
            assert ws.recv() == b"magic"


@pytest.mark.parametrize(("args", "message"), [
    (["--auth-plugin", "Nope"], "--auth-plugin Nope: websockify.auth_plugins has no plugin"),
    (["--auth-plugin", "BasicHTTPAuth"], "BasicHTTPAuth needs --auth-source user:password"),
    (["--auth-source", "x"], "--auth-source needs --auth-plugin"),
    (["--web-auth", "--auth-plugin", "ExpectOrigin"], "--web-auth needs --web"),
    (["--auth-plugin", "ClientCertCNAuth", "--auth-source", "alice"],
     "ClientCertCNAuth checks the certificate that --verify-client requires: add"),
])
def test_auth_start_up_errors(tmp_path: Path, args: list[str], message: str) -> None:
    with websockify(tmp_path, *args, "127.0.0.1:0", "127.0.0.1:5900",
                    wait_listening=False) as server:
        assert wait_exit(server.proc) == 2
        assert message in server.log()


def test_refusals_leave_others_served(tmp_path: Path, echo_target: TcpServer) -> None:
    with websockify(tmp_path, "--auth-plugin", "BasicHTTPAuth", "--auth-source", "u:p",
                    "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        with ws_connect(server.port, additional_headers=good) as flowing:
            for _ in range(20):
                assert refused(server.port).status_code == 401
            flowing.send(b"still flowing")
            assert flowing.recv() == b"still flowing"
        with pytest.raises(websockets.exceptions.InvalidStatus):
            echo_roundtrip(server.port)
