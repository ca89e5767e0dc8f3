"""End to end: plain HTTP on the bridge port (405 without --web; --web basics).

Detailed static-file behaviour is tested elsewhere; these tests prove what a user
sees from the real command line: a plain GET is refused without --web, --web
serves index.html and 404s, no path escapes the web root, and WebSocket upgrades
keep working on the same port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_support import echo_roundtrip
from tests.support import (
    TIMEOUT,
    TcpServer,
    Websockify,
    echo,
    http_status,
    raw_request,
    read_http_head,
    websockify,
)

INDEX = b"<!doctype html><title>bridge</title><p>index page</p>\n"
SECRET = b"TOP-SECRET-OUTSIDE-THE-WEB-ROOT\n"


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Websockify]:
    """websockify --web DIR in front of an echo target; a secret file sits next to DIR."""
    root = tmp_path_factory.mktemp("http")
    web = root / "web"
    (web / "sub").mkdir(parents=True)
    (web / "index.html").write_bytes(INDEX)
    (web / "sub" / "data.txt").write_bytes(b"sub data\n")
    (root / "secret.txt").write_bytes(SECRET)
    target = TcpServer(echo)
    with websockify(root, "--web", str(web), "127.0.0.1:0", f"127.0.0.1:{target.port}") as server:
        yield server
    target.close()


def test_plain_get_without_web_is_405(tmp_path: Path, echo_target: TcpServer) -> None:
    """Without --web a browser opening the bridge URL gets 405, and the server lives on."""
    with websockify(tmp_path, "127.0.0.1:0", f"127.0.0.1:{echo_target.port}") as server:
        for path in ("/", "/index.html"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(get(path))
                head = read_http_head(sock)
            assert http_status(head) == 405, head
        echo_roundtrip(server.port)


def test_web_serves_index_html_at_the_root(web_server: Websockify) -> None:
    """GET / and GET /index.html return the index file's exact bytes."""
    for path in ("/", "/index.html"):
        status, head, body = raw_request(web_server.port, get(path))
        assert status == 200, head
        assert body == INDEX


def test_web_serves_files_in_subdirectories(web_server: Websockify) -> None:
    status, head, body = raw_request(web_server.port, get("/sub/data.txt"))
    assert status == 200, head
    assert body == b"sub data\n"


def test_web_missing_file_is_404(web_server: Websockify) -> None:
    status, head, _ = raw_request(web_server.port, get("/no-such-file.html"))
    assert status == 404, head


@pytest.mark.parametrize("path", [
    "/../secret.txt",
    "/sub/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "//../secret.txt",
    "/./../secret.txt",
])
def test_web_path_traversal_never_leaves_the_root(web_server: Websockify, path: str) -> None:
    """Raw request paths with .. (plain or percent-encoded) never serve the file
    that sits outside the web root."""
    status, head, body = raw_request(web_server.port, get(path))
    assert status != 200 or SECRET not in body, head
    assert SECRET not in body
    assert 400 <= status < 500, head


def test_websocket_upgrade_still_works_with_web(web_server: Websockify) -> None:
    """--web does not take the WebSocket away: an upgrade on the same port bridges."""
    echo_roundtrip(web_server.port)


def test_stalled_web_download_is_one_log_line(tmp_path: Path, echo_target: TcpServer) -> None:
    """A client that asks for a large file and stops reading is dropped after
    --handshake-timeout with one line in the log, not a traceback, and the server
    keeps serving."""
    web = tmp_path / "web"
    web.mkdir()
    with open(web / "big.bin", "wb") as big:
        big.truncate(64 * 1024 * 1024)  # sparse: far more than the socket buffers hold
    with websockify(tmp_path, "--web", str(web), "--handshake-timeout", "1", "127.0.0.1:0",
                    f"127.0.0.1:{echo_target.port}") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get("/big.bin"))
        assert http_status(read_http_head(sock)) == 200
        server.wait_for_log(r"a write of the response did not complete within 1s \(the "
                            r"client reads too slowly or not at all\): dropped",
                            what="the stalled download's log line")
        echo_roundtrip(server.port)
        server.stop()
        assert "Traceback" not in server.log(), server.log()
