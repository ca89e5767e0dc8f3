"""websockify.static.StaticFiles over real HTTP on 127.0.0.1.

Each server is a subprocess running the app under gevent.pywsgi (what websockify
uses) or, for the ``wsgi.file_wrapper`` path, under wsgiref.  Clients are
http.client and raw sockets, so requests reach the app byte for byte as sent,
traversal attempts included.  Every wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import pytest

from tests.support import REPO, TIMEOUT, read_http_head, stop_process, wait_until
from websockify.errors import ConfigError
from websockify.static import StaticFiles

# argv: server kind ("gevent" or "wsgiref"), web root, file_only ("0"/"1"), uid to
# drop to once listening ("" to stay).  Prints the port, then serves; logs to stderr.
SERVER_SCRIPT = """
import logging, os, sys
from websockify.static import StaticFiles
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
kind, root, file_only, uid = sys.argv[1:]
app = StaticFiles(root, file_only=file_only == "1")
if kind == "gevent":
    from gevent.pywsgi import WSGIServer
    server = WSGIServer(("127.0.0.1", 0), app, log=sys.stderr, error_log=sys.stderr)
    server.start()
    port, serve = server.server_port, server.serve_forever
else:
    from wsgiref.simple_server import make_server
    server = make_server("127.0.0.1", 0, app)
    port, serve = server.server_port, server.serve_forever
if uid:
    os.setgid(int(uid))
    os.setuid(int(uid))
print(port, flush=True)
serve()
"""

SECRET = b"s3cr3t-outside-the-web-root"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


ServerFactory = Callable[..., Server]


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start StaticFiles servers on demand; all are stopped at the end of the test.

    Logs go to a directory of their own, never into a served tree.
    """
    servers: list[Server] = []
    log_dir = tmp_path_factory.mktemp("logs")

    def start(root: Path, file_only: bool = False, kind: str = "gevent", uid: str = "") -> Server:
        log_path = log_dir / f"server-{len(servers)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", SERVER_SCRIPT, kind, str(root), "01"[file_only], uid],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            proc.kill()
            proc.wait(TIMEOUT)
            raise AssertionError(f"server did not start: {line!r}\n{log_path.read_text()}")
        server = Server(proc, int(line), log_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_process(server.proc)
        assert server.proc.stdout is not None
        # Nothing but the port line on stdout: the module logs, it never prints.
        assert server.proc.stdout.read() == b""
        server.proc.stdout.close()


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A web root next to a secret file that no request may reach."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "app.js").write_bytes(b"export const x = 1;\n")
    (root / "<script>.txt").write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (root / "Zeta").mkdir()
    (root / "alpha.txt").write_bytes(b"a")
    return root


@pytest.fixture
def server(serve: ServerFactory, www: Path) -> Server:
    return serve(www)


def request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request over a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def raw_request(port: int, head: bytes) -> tuple[int, bytes, bytes]:
    """Send ``head`` byte for byte, read to EOF: (status, response head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    response_head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response_head)
    assert match, data[:200]
    return int(match.group(1)), response_head, body


def raw_get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes, bytes]:
    return raw_request(
        port, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )


# --------------------------------------------------------------------------- files


def test_file_is_served_with_type_length_and_date(server: Server, www: Path) -> None:
    status, headers, body = request(server.port, "/hello.txt")
    assert (status, body) == (200, b"hello, world\n")
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Length"] == str(len(body))
    modified = parsedate_to_datetime(headers["Last-Modified"])
    assert int(modified.timestamp()) == int((www / "hello.txt").stat().st_mtime)


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("a.js", {"text/javascript", "application/javascript"}),
        ("a.mjs", {"text/javascript", "application/javascript"}),
        ("a.wasm", {"application/wasm"}),
        ("a.html", {"text/html"}),
        ("a.css", {"text/css"}),
        ("a.svg", {"image/svg+xml"}),
        ("a.JS", {"text/javascript", "application/javascript"}),
        ("no-extension", {"application/octet-stream"}),
        ("a.tar.gz", {"application/octet-stream"}),
    ],
)
def test_content_types(serve: ServerFactory, tmp_path: Path, name: str, allowed: set[str]) -> None:
    (tmp_path / name).write_bytes(b"content")
    status, headers, body = request(serve(tmp_path).port, "/" + name)
    assert (status, body) == (200, b"content")
    assert headers["Content-Type"] in allowed


def test_query_string_is_ignored(server: Server) -> None:
    status, _, body = request(server.port, "/hello.txt?v=1.2&x=%2e%2e")
    assert (status, body) == (200, b"hello, world\n")


def test_head_has_headers_and_no_body(server: Server) -> None:
    status, head, body = raw_get(server.port, b"/hello.txt", b"HEAD")
    assert status == 200
    assert b"\r\nContent-Length: 13" in head
    assert body == b""
    status, head, body = raw_get(server.port, b"/missing", b"HEAD")
    assert (status, body) == (404, b"")


def test_if_modified_since(server: Server, www: Path) -> None:
    _, headers, _ = request(server.port, "/hello.txt")
    last_modified = headers["Last-Modified"]
    status, headers, body = request(
        server.port, "/hello.txt", headers={"If-Modified-Since": last_modified}
    )
    assert (status, body) == (304, b"")
    assert headers["Last-Modified"] == last_modified

    older = formatdate((www / "hello.txt").stat().st_mtime - 3600, usegmt=True)
    for since in (older, "not a date", ""):
        status, _, body = request(server.port, "/hello.txt", headers={"If-Modified-Since": since})
        assert (status, body) == (200, b"hello, world\n"), since


def test_if_none_match_overrides_if_modified_since(server: Server) -> None:
    """RFC 9110 13.1.3: with If-None-Match present, If-Modified-Since is ignored.
    No ETag is ever sent, so a list of tags never matches (200) and only "*"
    matches the file that exists (304)."""
    _, headers, _ = request(server.port, "/hello.txt")
    fresh = headers["Last-Modified"]
    for tags in ('"abc"', 'W/"abc", "def"'):
        status, _, body = request(server.port, "/hello.txt",
                                  headers={"If-None-Match": tags, "If-Modified-Since": fresh})
        assert (status, body) == (200, b"hello, world\n"), tags
    status, _, body = request(server.port, "/hello.txt", headers={"If-None-Match": "*"})
    assert (status, body) == (304, b"")


@pytest.mark.parametrize("kind", ["gevent", "wsgiref"])
def test_large_file_arrives_intact(serve: ServerFactory, tmp_path: Path, kind: str) -> None:
    data = os.urandom(5 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    status, headers, body = request(serve(tmp_path, kind=kind).port, "/big.bin")
    assert status == 200
    assert headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def open_descriptors(pid: int, path: Path) -> int:
    """How many of process ``pid``'s descriptors point at ``path``."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(fd) == str(path)
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("kind", ["gevent", "wsgiref"])
def test_file_is_streamed_and_closed_when_client_hangs_up(
    serve: ServerFactory, tmp_path: Path, kind: str
) -> None:
    """Mid-transfer the file is open (streamed, not slurped); a hang-up closes it."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 * 1024 * 1024))
    server = serve(tmp_path, kind=kind)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_http_head(sock).startswith(b"HTTP/1.")
        assert sock.recv(1024)
        wait_until(lambda: open_descriptors(server.proc.pid, big) == 1,
                   "the server to hold big.bin open mid-transfer")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_until(lambda: open_descriptors(server.proc.pid, big) == 0,
               "the server to close big.bin after the hang-up")
    # ... and the server is still serving.
    assert request(server.port, "/")[0] == 200


def test_complete_response_closes_the_file(server: Server, www: Path) -> None:
    for _ in range(3):
        request(server.port, "/hello.txt")
        request(server.port, "/hello.txt", "HEAD")
    if Path("/proc/self/fd").is_dir():
        assert open_descriptors(server.proc.pid, www / "hello.txt") == 0


def test_fifo_is_not_served_and_does_not_block(serve: ServerFactory, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    server = serve(tmp_path)
    assert request(server.port, "/pipe")[0] == 404
    assert request(server.port, "/")[0] == 200


# ------------------------------------------------------------------- directories


def test_directory_without_slash_redirects(server: Server) -> None:
    status, headers, _ = request(server.port, "/sub")
    assert (status, headers["Location"]) == (301, "/sub/")
    status, headers, _ = request(server.port, "/sub?path=a%20b&x")
    assert (status, headers["Location"]) == (301, "/sub/?path=a%20b&x")


def test_redirect_never_leaves_the_site(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "evil.example").mkdir()
    status, head, _ = raw_get(serve(tmp_path).port, b"//evil.example")
    assert status == 301
    assert b"\r\nLocation: /evil.example/\r\n" in head + b"\r\n"


def test_index_html_then_index_htm(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "index.html").write_bytes(b"<p>html</p>")
    (tmp_path / "both" / "index.htm").write_bytes(b"<p>htm</p>")
    (tmp_path / "htm").mkdir()
    (tmp_path / "htm" / "index.htm").write_bytes(b"<p>htm</p>")
    server = serve(tmp_path)
    status, headers, body = request(server.port, "/both/")
    assert (status, body, headers["Content-Type"]) == (200, b"<p>html</p>", "text/html")
    assert request(server.port, "/htm/")[2] == b"<p>htm</p>"


def test_listing_is_sorted_escaped_and_marks_directories(server: Server) -> None:
    status, headers, body = request(server.port, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    page = body.decode()
    hrefs = re.findall(r'<a href="([^"]*)">([^<]*)</a>', page)
    assert hrefs == [
        ("%3Cscript%3E.txt", "&lt;script&gt;.txt"),
        ("alpha.txt", "alpha.txt"),
        ("app.js", "app.js"),
        ("hello.txt", "hello.txt"),
        ("sub/", "sub/"),
        ("Zeta/", "Zeta/"),
    ]
    assert "<script>" not in page
    # The escaped link leads to the file.
    assert request(server.port, "/%3Cscript%3E.txt")[2] == b"x"


def test_listing_is_never_cached(server: Server, www: Path) -> None:
    assert "later.txt" not in request(server.port, "/sub/")[2].decode()
    (www / "sub" / "later.txt").write_bytes(b"")
    page = request(server.port, "/sub/")[2].decode()
    assert '<a href="../">../</a>' in page
    assert '<a href="later.txt">later.txt</a>' in page


def test_listing_of_unusual_names(serve: ServerFactory, tmp_path: Path) -> None:
    names = ["h\u00e9llo w\u00f6rld.txt", "a&b\"c'.txt", "javascript:alert(1)", "100%.txt"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / os.fsdecode(b"latin1-\xe9.txt")).write_bytes(b"latin1")
    server = serve(tmp_path)
    page = request(server.port, "/")[2].decode()
    hrefs = re.findall(r'<a href="([^"]*)">', page)
    assert "javascript%3Aalert%281%29" in hrefs  # not a javascript: URL
    assert "a&amp;b&quot;c&#x27;.txt" in page
    assert "latin1-\ufffd.txt" in page
    for href in hrefs:
        status, _, body = request(server.port, "/" + href)
        assert status == 200, href
        assert body in {name.encode() for name in names} | {b"latin1"}


def test_file_only_hides_listings(serve: ServerFactory, www: Path) -> None:
    (www / "sub" / "index.html").write_bytes(b"index")
    server = serve(www, file_only=True)
    status, _, body = request(server.port, "/")
    assert status == 404
    assert b"hello.txt" not in body
    assert request(server.port, "/sub/")[2] == b"index"
    assert request(server.port, "/hello.txt")[2] == b"hello, world\n"


def test_trailing_slash_on_a_file_is_not_found(server: Server) -> None:
    assert request(server.port, "/hello.txt/")[0] == 404


# ------------------------------------------------------------------------ errors


def test_missing_is_404_with_a_small_page(server: Server, www: Path) -> None:
    status, headers, body = request(server.port, "/nope/missing.txt")
    assert status == 404
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"404 Not Found" in body
    assert len(body) < 512
    assert str(www).encode() not in body
    assert b"missing.txt" not in body
    assert "websockify.static DEBUG 404" in server.log()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405(server: Server, method: str) -> None:
    status, headers, body = request(server.port, "/hello.txt", method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"405 Method Not Allowed" in body


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A web root that an unprivileged user can traverse (tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="websockify-static-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(path)


def test_unreadable_is_403(serve: ServerFactory, shared_dir: Path) -> None:
    (shared_dir / "locked.txt").write_bytes(b"locked")
    (shared_dir / "locked.txt").chmod(0)
    (shared_dir / "closed").mkdir()
    (shared_dir / "closed").chmod(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # As root permissions are not enforced, so the server drops to nobody.
    server = serve(shared_dir, uid="65534" if os.geteuid() == 0 else "")
    status, _, body = request(server.port, "/locked.txt")
    assert status == 403
    assert b"locked" not in body
    assert request(server.port, "/closed/")[0] == 403
    assert "permission denied" in server.log()


def test_missing_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        StaticFiles(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError):
        StaticFiles(str(tmp_path / "file"))


# --------------------------------------------------------------------- traversal

TRAVERSALS = [
    b"/../secret.txt",
    b"/../../../../../../etc/passwd",
    b"/%2e%2e/secret.txt",
    b"/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/%2E%2E/secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2f..%2f..%2f..%2fetc/passwd",
    b"/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"/sub/../../secret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/./.././secret.txt",
    b"/..",
    b"/..%5c..%5csecret.txt",
    b"//etc/passwd",
    b"/%2fetc/passwd",
    b"/etc/passwd",
    b"/hello.txt%00",
    b"/hello.txt%00.html",
    b"/%00/../secret.txt",
    b"http://127.0.0.1/../secret.txt",
    b"../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_is_refused(server: Server, target: bytes) -> None:
    status, _, body = raw_get(server.port, target)
    assert status == 404
    assert SECRET not in body
    assert b"root:" not in body


def test_traversal_is_logged(server: Server) -> None:
    raw_get(server.port, b"/%2e%2e/secret.txt")
    assert re.search(r"websockify\.static INFO refused .*not a path inside", server.log())


def test_symlinks_out_of_the_root_are_refused(serve: ServerFactory, www: Path) -> None:
    outside = www.parent
    (www / "escape.txt").symlink_to(outside / "secret.txt")
    (www / "escape-dir").symlink_to(outside, target_is_directory=True)
    (www / "sub" / "deep").symlink_to("../../secret.txt")
    (www / "inside.txt").symlink_to("sub/inner.txt")
    (www / "inside-dir").symlink_to("sub", target_is_directory=True)
    (www / "alias.js").symlink_to("sub/inner.txt")
    server = serve(www)
    for target in (b"/escape.txt", b"/escape-dir/", b"/escape-dir/secret.txt", b"/sub/deep"):
        status, _, body = raw_get(server.port, target)
        assert status == 404, target
        assert SECRET not in body
    assert "resolves outside" in server.log()
    # Links that stay inside work, and listings show only those.
    assert request(server.port, "/inside.txt")[2] == b"inner"
    assert request(server.port, "/inside-dir/inner.txt")[2] == b"inner"
    # The type follows the name asked for, not the link's target.
    assert request(server.port, "/alias.js")[1]["Content-Type"] == "text/javascript"
    page = request(server.port, "/")[2].decode()
    assert '"inside.txt"' in page
    assert '"inside-dir/"' in page
    assert "escape" not in page
    assert "deep" not in request(server.port, "/sub/")[2].decode()


def test_root_given_through_a_symlink(serve: ServerFactory, www: Path, tmp_path: Path) -> None:
    link = tmp_path / "www-link"
    link.symlink_to(www, target_is_directory=True)
    server = serve(link)
    assert request(server.port, "/hello.txt")[2] == b"hello, world\n"
    assert raw_get(server.port, b"/../secret.txt")[0] == 404


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_closing_the_body_closes_the_file(www: Path) -> None:
    """The WSGI close() itself releases the file, not the garbage collector.

    Called in-process because over a socket CPython's reference counting would
    close a forgotten file too, hiding a close() that does nothing.
    """
    statuses: list[str] = []
    written: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], object]:
        statuses.append(status)
        return written.append

    body = StaticFiles(www)({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello.txt"}, start_response)
    assert statuses == ["200 OK"]
    assert next(iter(body)) == b"hello, world\n"
    assert open_descriptors(os.getpid(), www / "hello.txt") == 1
    assert hasattr(body, "close")
    body.close()
    assert open_descriptors(os.getpid(), www / "hello.txt") == 0
    assert written == []
