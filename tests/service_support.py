"""Real services the plugins talk to: a redis-server and an HTTP token API, on loopback.

redis-server comes from Debian (``make test`` installs it); it is started on a
free loopback port with no persistence and stopped at the end.  The token API is
the standard library's HTTP server answering from a dict, in a thread.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
import redis

from tests.support import TIMEOUT, stop_process


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1 (optionally with a password)."""

    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make test installs it)")
        self.password = password
        for _ in range(5):  # the port could be taken between probe and bind
            self.port = free_loopback_port()
            args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
            if password:
                args += ["--requirepass", password]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
        raise AssertionError("redis-server did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                return bool(self.client().ping())
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        return False

    def client(self, db: int = 0) -> redis.Redis:
        """A redis-py client, to put tokens in as a deployment's other services would."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=TIMEOUT)

    def stop(self) -> None:
        stop_process(self.proc)


class TokenApi:
    """An HTTP token API on 127.0.0.1: GET /plain/TOKEN -> host:port, /json/TOKEN -> JSON.

    ``targets`` maps tokens to (host, port); a token in ``gates`` is answered only once
    its event is set (or after TIMEOUT);
    ``requests`` records the tokens asked for, as the API received them.
    """

    def __init__(self) -> None:
        self.targets: dict[str, tuple[str, int]] = {}
        self.gates: dict[str, threading.Event] = {}
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kind, _, token = self.path.lstrip("/").partition("/")
                token = unquote(token)
                api.requests.append(token)
                gate = api.gates.get(token)
                if gate is not None:
                    gate.wait(TIMEOUT)
                target = api.targets.get(token)
                if target is None:
                    self._answer(404, b"unknown token\n", "text/plain")
                elif kind == "json":
                    body = json.dumps({"host": target[0], "port": target[1]}).encode()
                    self._answer(200, body, "application/json")
                else:
                    self._answer(200, f"{target[0]}:{target[1]}".encode(), "text/plain")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/%s"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(password)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def token_api() -> Iterator[TokenApi]:
    api = TokenApi()
    try:
        yield api
    finally:
        api.close()
