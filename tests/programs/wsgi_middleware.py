"""websockify's application wrapped in a trivial WSGI middleware, under either server.

Run as a script, it serves the wrapped application with websockify's own server
class (argv: websockify's arguments).  Under gunicorn, name
``tests.programs.wsgi_middleware:wrapped_application()`` as the application.
Either way the handler must still find its settings (handshake timeout, message
limit, Hixie on or off): from the server, since the application it sees is not
websockify's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from websockify import cli, listeners, logsetup
from websockify.app import create_app


class Middleware:
    """Passes every request through, marking the environ as a middleware would."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["tests.middleware"] = True
        return self.app(environ, start_response)


def wrapped_application() -> Middleware:
    """For gunicorn: websockify.wsgi's application (from WEBSOCKIFY_ARGS), wrapped."""
    from websockify.wsgi import application
    return Middleware(application)


def main() -> int:
    from websockify.server import WebsockifyServer

    settings = cli.parse(sys.argv[1:])
    logsetup.configure(settings)
    assert settings.listen is not None
    listener = listeners.open_listener(settings.listen)
    server = WebsockifyServer(listener, Middleware(create_app(settings)), settings)
    server.start()
    logging.getLogger("websockify").info("listening on %s", listeners.describe(listener))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
