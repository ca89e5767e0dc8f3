"""Run upstream's Python API (``websockify.WebSocketProxy``) the way importing programs do.

The proxy runs in a ``multiprocessing.Process`` of a chosen start method (fork,
spawn, forkserver), as a service that imports websockify would; it reports the
address it listens on through a queue, so no port is guessed.  Stopping it sends
SIGTERM, as a service manager does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import TIMEOUT


def _load(path: str) -> Any:
    import importlib

    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


def serve_proxy(queue: Any, proxy: str | None, handler: str | None,
                kwargs: dict[str, Any]) -> None:
    """Process target: build a WebSocketProxy from ``kwargs`` and serve until SIGTERM.

    ``proxy`` and ``handler`` are "module:Class" names of a WebSocketProxy subclass
    and a request handler; a ``started`` hook puts the listening address on ``queue``.
    """
    import logging

    from websockify.websocketproxy import ProxyRequestHandler, WebSocketProxy

    logging.basicConfig(level=logging.DEBUG, format="%(process)d %(name)s %(message)s",
                        force=True)
    handler_class = _load(handler) if handler else ProxyRequestHandler
    proxy_class = _load(proxy) if proxy else WebSocketProxy

    class ReportingProxy(proxy_class):  # type: ignore[valid-type, misc]
        def started(self) -> None:
            super().started()
            queue.put(self.server_address)

    ReportingProxy(handler_class, **kwargs).start_server()


class LibraryProxy:
    """A WebSocketProxy serving in a multiprocessing.Process of start method ``method``."""

    def __init__(self, method: str, handler: str | None = None, proxy: str | None = None,
                 **kwargs: Any) -> None:
        context = multiprocessing.get_context(method)
        self._queue = context.Queue()
        kwargs.setdefault("listen_host", "127.0.0.1")
        kwargs.setdefault("listen_port", 0)
        self.process = context.Process(target=serve_proxy, args=(self._queue, proxy, handler,
                                                                  kwargs))
        self.process.start()
        try:
            self.address = self._queue.get(timeout=TIMEOUT)
        except Exception:
            self.stop()
            raise
        self.port = self.address[1] if isinstance(self.address, tuple) else 0

    def stop(self) -> int | None:
        """SIGTERM, then wait (bounded); returns the process's exit code."""
        if self.process.pid is not None and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.join(TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(TIMEOUT)
            raise AssertionError("the library proxy did not stop within TIMEOUT after SIGTERM")
        self._queue.close()
        return self.process.exitcode


@contextmanager
def library_proxy(method: str = "fork", handler: str | None = None, proxy: str | None = None,
                  **kwargs: Any) -> Iterator[LibraryProxy]:
    """A :class:`LibraryProxy` for the duration of a with-block."""
    server = LibraryProxy(method, handler, proxy, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if not children.exists():
        return []
    return [int(word) for word in children.read_text().split()]


def python_modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                            text=True, timeout=TIMEOUT)
    return set(result.stdout.split())
