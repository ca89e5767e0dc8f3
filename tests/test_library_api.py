"""Upstream's Python API surface: imports, keywords, plugins, files, lifecycle.

Real sockets on 127.0.0.1 and unix sockets, python-websockets clients, and the
proxy in a forked process or (for the run-once and terminate() cases) a thread.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.bridge_support import (
    echo_roundtrip,
    recv_bytes,
    unix_echo_server,
    ws_connect,
    ws_unix_connect,
)
from tests.library_support import library_proxy, python_modules_after
from tests.support import TIMEOUT, TcpServer, raw_request, upgrade_request, wait_until
from websockify.errors import ConfigError
from websockify.websocketproxy import (
    ProxyRequestHandler,
    WebSocketProxy,
    load_plugin,
    select_ssl_version,
)


class DictTokens:
    """A token plugin as upstream's are built: with a source string, and lookup(token)."""

    def __init__(self, source: str) -> None:
        self.targets = dict(item.split("=", 1) for item in source.split(","))

    def lookup(self, token: str) -> tuple[str, str] | None:
        target = self.targets.get(token)
        if target is None:
            return None
        if target.startswith("unix:"):
            return "unix_socket", target[len("unix:"):]
        host, _, port = target.rpartition(":")
        return host, port


class PortInPathHandler(ProxyRequestHandler):
    """Picks this connection's target itself: the port is the request path."""

    def validate_connection(self) -> None:
        self.target_host, self.target_port = "127.0.0.1", int(self.path.strip("/"))


def test_a_subclass_sets_the_connections_own_target(echo_target: TcpServer) -> None:
    with library_proxy("fork", "tests.test_library_api:PortInPathHandler",
                       target_host="127.0.0.1", target_port=1) as proxy:
        echo_roundtrip_path(proxy.port, f"/{echo_target.port}", b"own target")


def test_import_websockify_loads_neither_gevent_nor_the_library_layer() -> None:
    loaded = python_modules_after("import websockify")
    assert "gevent" not in loaded
    assert "websockify.websocketproxy" not in loaded
    # The command line does not pay for the library layer either.
    assert "websockify.websocketproxy" not in python_modules_after("import websockify.cli")


def test_upstream_names_import_without_gevent() -> None:
    loaded = python_modules_after(
        "import websockify\n"
        "from websockify import websockifyserver, websocketproxy, websocket, websocketserver\n"
        "websockify.WebSocketProxy, websockify.ProxyRequestHandler, websockify.WebSocket\n"
        "websocketproxy.select_ssl_version, websocketproxy.SSL_OPTIONS\n"
        "websockifyserver.WebSockifyServer.socket, websockifyserver.CClose\n"
        "websockifyserver.WebSockifyRequestHandler.CClose\n")
    assert not {name for name in loaded if name.split(".")[0] in ("gevent", "geventwebsocket")}


def test_construction_takes_upstreams_keywords_without_side_effects(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    proxy = WebSocketProxy(
        listen_host="127.0.0.1", listen_port="6080", target_host="localhost", target_port=5900,
        unix_target=None, wrap_cmd=None, ssl_target=False, cert="self.pem", key=None,
        ssl_only=False, ssl_options=select_ssl_version("tlsv1_2"), daemon=False,
        record="", traffic=False, web=str(tmp_path), file_only=True, run_once=False,
        timeout=0, idle_timeout=0, heartbeat=None, token_plugin=None, auth_plugin=None,
        verbose=True, source_is_ipv6=False, unix_listen=None, ssl_ciphers=None,
        verify_client=False, cafile=None, web_auth=False, host_token=False)
    assert proxy.listen_port == 6080
    assert proxy.only_upgrade is False
    assert Path.cwd() == tmp_path  # upstream chdir()s into web at construction; we do not
    assert list(tmp_path.iterdir()) == []
    WebSocketProxy()  # no arguments at all, as nova's unit tests build it
    with pytest.raises(TypeError):
        WebSocketProxy(no_such_option=1)
    with pytest.raises(ConfigError, match="wrap"):
        WebSocketProxy(wrap_cmd=["vncserver"])


def test_plugin_names_resolve_to_objects() -> None:
    plugin = load_plugin("tests.test_library_api.DictTokens", "websockify.token_plugins",
                         "a=h:1")
    assert plugin.lookup("a") == ("h", "1")
    same = DictTokens("b=h:2")
    assert load_plugin(same, "websockify.token_plugins") is same
    with pytest.raises(ImportError):
        load_plugin("tests.test_library_api.NoSuchPlugin", "websockify.token_plugins")


def test_token_plugin_by_name_picks_each_connections_target(tmp_path: Path,
                                                             echo_target: TcpServer) -> None:
    unix_path = tmp_path / "echo.sock"
    unix_target = unix_echo_server(unix_path)
    source = f"tcp=127.0.0.1:{echo_target.port},unix=unix:{unix_path}"
    try:
        with library_proxy("fork", token_plugin="tests.test_library_api.DictTokens",
                           token_source=source) as proxy:
            for token in ("tcp", "unix", "tcp"):
                echo_roundtrip_path(proxy.port, f"/?token={token}", token.encode())
            request = upgrade_request(protocols=None, path="/?token=nope")
            status, _, _ = raw_request(proxy.port, request)
            assert status == 403
            echo_roundtrip_path(proxy.port, "/?token=unix", b"still serving")
    finally:
        unix_target.close()


def echo_roundtrip_path(port: int, path: str, payload: bytes) -> None:
    with ws_connect(port, path=path) as ws:
        ws.send(payload)
        assert recv_bytes(ws, len(payload)) == payload


def test_unix_listen_and_unix_target(tmp_path: Path) -> None:
    target_path, listen_path = tmp_path / "target.sock", tmp_path / "listen.sock"
    target = unix_echo_server(target_path)
    try:
        with library_proxy("fork", unix_listen=str(listen_path),
                           unix_target=str(target_path)):
            assert listen_path.stat().st_mode & 0o777 == 0o600
            with ws_unix_connect(listen_path) as ws:
                ws.send(b"over unix both ways")
                assert recv_bytes(ws, 19) == b"over unix both ways"
    finally:
        target.close()


def test_web_files_and_file_only(tmp_path: Path, echo_target: TcpServer) -> None:
    (tmp_path / "vnc.html").write_text("<p>noVNC</p>")
    (tmp_path / "sub").mkdir()
    get = b"GET /vnc.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    listing = b"GET /sub/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with library_proxy("fork", web=str(tmp_path), target_host="127.0.0.1",
                       target_port=echo_target.port) as proxy:
        assert raw_request(proxy.port, get)[::2] == (200, b"<p>noVNC</p>")
        assert raw_request(proxy.port, listing)[0] == 200
        echo_roundtrip(proxy.port)  # WebSockets on the same port
    with library_proxy("fork", web=str(tmp_path), file_only=True, target_host="127.0.0.1",
                       target_port=echo_target.port) as proxy:
        assert raw_request(proxy.port, get)[0] == 200
        assert raw_request(proxy.port, listing)[0] == 404


def test_record_writes_upstreams_frame_file(tmp_path: Path, echo_target: TcpServer) -> None:
    record = tmp_path / "session"
    with library_proxy("fork", record=str(record), target_host="127.0.0.1",
                       target_port=echo_target.port) as proxy:
        echo_roundtrip(proxy.port, b"recorded")
        recording = tmp_path / "session.1"
        wait_until(lambda: recording.exists() and "'EOF'];" in recording.read_text(),
                   "the finished recording")
    text = recording.read_text()
    assert text.startswith("var VNC_frame_data = [\n")
    assert re.search(r"^'\}\d+\}recorded',$", text, re.MULTILINE)  # from the client
    assert re.search(r"^'\{\d+\{recorded',$", text, re.MULTILINE)  # to the client


@pytest.fixture
def threaded_proxy(echo_target: TcpServer) -> Iterator[tuple[WebSocketProxy, threading.Thread]]:
    proxy = WebSocketProxy(listen_host="127.0.0.1", listen_port=0, target_host="127.0.0.1",
                           target_port=echo_target.port, run_once=True)
    thread = threading.Thread(target=proxy.start_server, daemon=True)
    thread.start()
    wait_until(lambda: proxy.server_address is not None, "the listener")
    yield proxy, thread
    proxy.terminate()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_run_once_serves_one_websocket_then_returns(threaded_proxy) -> None:
    proxy, thread = threaded_proxy
    port = proxy.server_address[1]
    status, _, _ = raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405  # a plain request is not the one WebSocket
    assert thread.is_alive()
    echo_roundtrip(port, b"the only one")
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_terminate_from_another_thread_stops_the_server(echo_target: TcpServer) -> None:
    proxy = WebSocketProxy(listen_host="127.0.0.1", listen_port=0, target_host="127.0.0.1",
                           target_port=echo_target.port)
    thread = threading.Thread(target=proxy.start_server, daemon=True)
    thread.start()
    wait_until(lambda: proxy.server_address is not None, "the listener")
    echo_roundtrip(proxy.server_address[1])
    proxy.terminate()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_idle_timeout_ends_the_server(echo_target: TcpServer) -> None:
    proxy = WebSocketProxy(listen_host="127.0.0.1", listen_port=0, target_host="127.0.0.1",
                           target_port=echo_target.port, idle_timeout=1)
    thread = threading.Thread(target=proxy.start_server, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert proxy.server_address is not None


def test_unreachable_target_gets_1011_and_the_server_keeps_serving(tmp_path: Path) -> None:
    with library_proxy("fork", unix_target=str(tmp_path / "nobody.sock")) as proxy:
        for _ in range(2):
            with ws_connect(proxy.port) as ws, pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_auth_plugin_refusal_is_an_http_answer(echo_target: TcpServer) -> None:
    pytest.importorskip("websockify.auth_plugins")
    with library_proxy("fork", auth_plugin="BasicHTTPAuth", auth_source="user:secret",
                       target_host="127.0.0.1", target_port=echo_target.port) as proxy:
        status, head, _ = raw_request(proxy.port, upgrade_request(protocols=None, path="/"))
        assert status == 401
        assert b"WWW-Authenticate" in head
        with ws_connect(proxy.port, additional_headers={
                "Authorization": "Basic dXNlcjpzZWNyZXQ="}) as ws:
            ws.send(b"let in")
            assert recv_bytes(ws, 6) == b"let in"


DAEMON_PROGRAM = """
import os, sys
from websockify.websocketproxy import WebSocketProxy

class Proxy(WebSocketProxy):
    def started(self):
        super().started()
        with open(sys.argv[2] + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.rename(sys.argv[2] + ".tmp", sys.argv[2])

Proxy(unix_listen=sys.argv[1], target_host="127.0.0.1", target_port=int(sys.argv[3]),
      daemon=True).start_server()
"""


def test_daemon_detaches_and_serves(tmp_path: Path, echo_target: TcpServer) -> None:
    listen, pid_file = tmp_path / "ws.sock", tmp_path / "daemon.pid"
    launcher = subprocess.run(
        [sys.executable, "-c", DAEMON_PROGRAM, str(listen), str(pid_file), str(echo_target.port)],
        capture_output=True, timeout=TIMEOUT, check=False)
    assert launcher.returncode == 0, launcher.stderr  # the launching process returns at once
    wait_until(pid_file.exists, "the daemon's pid file")
    pid = int(pid_file.read_text())
    try:
        assert os.getsid(pid) != os.getsid(0)  # a session of its own, detached from ours
        assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")
        with ws_unix_connect(listen) as ws:
            ws.send(b"from a daemon")
            assert recv_bytes(ws, 13) == b"from a daemon"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists()
               or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0],
               "the daemon to exit")
    assert not listen.exists()  # its unix socket is removed on the way out


def test_inherited_listening_socket(echo_target: TcpServer) -> None:
    """listen_fd (upstream's --inetd): serve on a listening socket the caller opened."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            library_proxy("fork", listen_fd=listener.fileno(), target_host="127.0.0.1",
                          target_port=echo_target.port) as proxy:
        assert proxy.port == listener.getsockname()[1]
        echo_roundtrip(proxy.port, b"inherited")
